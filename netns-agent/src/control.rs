//! The running agent's control socket (`<state_dir>/control.sock`, mode 0600, root
//! only): `netns-agent apply --config FILE` hands the file to the running agent, which
//! applies it like a SIGHUP and answers with the outcome (one JSON line each way);
//! `netns-agent flows --follow` asks for the flow records, which then come as JSON lines
//! until the client goes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
};
use tracing::{info, warn};

use crate::{
    flowlog::LogRecord,
    source::ConfigSource,
    state::{ApplyReport, StateDir},
};

/// What a client asks, as its first line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlRequest {
    Apply(ApplyRequest),
    /// Every flow record from now on.
    Follow,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The config file to apply (absolute).
    pub config: PathBuf,
    /// `config` is an EdgeDevConfig, with these bindings.
    #[serde(default)]
    pub eve: bool,
    #[serde(default)]
    pub bindings: Option<PathBuf>,
}

impl ApplyRequest {
    pub fn source(&self) -> ConfigSource {
        match self.eve {
            true => ConfigSource::Eve { config: self.config.clone(), bindings: self.bindings.clone() },
            false => ConfigSource::Toml(self.config.clone()),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ApplyReply {
    /// Applied with no error.
    pub ok: bool,
    /// Refused before anything changed (a bad config): the errors say why.
    pub refused: bool,
    pub report: Option<ApplyReport>,
    pub errors: Vec<String>,
}

impl ApplyReply {
    /// `netns-agent apply`'s output: the changes and the time; an error unless applied
    /// without errors.
    pub fn print(&self) -> Result<()> {
        if let Some(r) = &self.report {
            for c in &r.changes {
                println!("{c}");
            }
            println!("applied in {:.1} ms", r.duration_ms);
        }
        if self.ok {
            return Ok(());
        }
        let what = if self.refused { "refused (nothing changed)" } else { "applied with errors" };
        anyhow::bail!("{what}:\n  {}", self.errors.join("\n  "))
    }
}

/// A request from `netns-agent apply`, with the way to answer it.
pub struct Request {
    pub apply: ApplyRequest,
    pub reply: oneshot::Sender<ApplyReply>,
}

/// Listens on the control socket; apply requests arrive on the returned channel,
/// followers get `flows` records.
pub fn listen(state_dir: &Path, flows: broadcast::Sender<LogRecord>) -> Result<mpsc::Receiver<Request>> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let path = StateDir::control_socket(state_dir);
    // A socket file left by a killed agent: nobody listens on it any more.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (tx, flows) = (tx.clone(), flows.clone());
            tokio::spawn(async move {
                if let Err(e) = serve(stream, tx, flows).await {
                    warn!("control socket: {e:#}");
                }
            });
        }
    });
    info!("control socket {}", path.display());
    Ok(rx)
}

async fn serve(stream: UnixStream, tx: mpsc::Sender<Request>, flows: broadcast::Sender<LogRecord>) -> Result<()> {
    let uid = stream.peer_cred().context("reading the peer's credentials")?.uid();
    let (read, mut write) = stream.into_split();
    let reply = if uid != 0 {
        ApplyReply {
            refused: true,
            errors: vec![format!("uid {uid} may not use the agent's control socket (root only)")],
            ..Default::default()
        }
    } else {
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        match serde_json::from_str(&line).context("reading the request")? {
            ControlRequest::Follow => return follow(write, flows.subscribe()).await,
            ControlRequest::Apply(apply) => {
                let (reply, answer) = oneshot::channel();
                tx.send(Request { apply, reply }).await.context("the agent is stopping")?;
                answer.await.context("the agent is stopping")?
            }
        }
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Streams flow records to a follower until it goes. One that falls behind by more than
/// the channel holds is told how many it missed.
async fn follow(mut write: tokio::net::unix::OwnedWriteHalf, mut records: broadcast::Receiver<LogRecord>) -> Result<()> {
    loop {
        let line = match records.recv().await {
            Ok(r) => serde_json::to_vec(&r)?,
            Err(broadcast::error::RecvError::Lagged(n)) => serde_json::to_vec(&serde_json::json!({ "missed": n }))?,
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        if write.write_all(&line).await.is_err() || write.write_all(b"\n").await.is_err() {
            return Ok(());
        }
    }
}

fn connect_error(state_dir: &Path, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("no agent is running over {} ({}: {e})", state_dir.display(), StateDir::control_socket(state_dir).display())
}

/// Prints the running agent's flow records as they come (JSON lines, or a line each).
pub async fn follow_flows(state_dir: &Path, json: bool) -> Result<()> {
    let stream = UnixStream::connect(StateDir::control_socket(state_dir)).await.map_err(|e| connect_error(state_dir, e))?;
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(&ControlRequest::Follow)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        if json {
            println!("{line}");
        } else if let Ok(r) = serde_json::from_str::<LogRecord>(&line) {
            crate::flowlog::print_line(&r);
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

/// Asks the agent running over `state_dir` to apply `config`; waits for its answer.
pub async fn request_apply(state_dir: &Path, source: &ConfigSource) -> Result<ApplyReply> {
    let stream = UnixStream::connect(StateDir::control_socket(state_dir)).await.map_err(|e| connect_error(state_dir, e))?;
    std::fs::metadata(source.path()).with_context(|| format!("reading {}", source.path().display()))?;
    let request = match source.canonical() {
        ConfigSource::Toml(config) => ApplyRequest { config, eve: false, bindings: None },
        ConfigSource::Eve { config, bindings } => ApplyRequest { config, eve: true, bindings },
    };
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(&ControlRequest::Apply(request))?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line).context("the agent's answer")
}
