//! The running agent's control socket (`<state_dir>/control.sock`, mode 0600, root
//! only): `netns-agent apply --config FILE` hands the file to the running agent, which
//! applies it like a SIGHUP and answers with the outcome. One JSON line each way.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use crate::state::{ApplyReport, StateDir};

#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The config file to apply (absolute).
    pub config: PathBuf,
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

/// A request from `netns-agent apply`, with the way to answer it.
pub struct Request {
    pub apply: ApplyRequest,
    pub reply: oneshot::Sender<ApplyReply>,
}

/// Listens on the control socket; requests arrive on the returned channel.
pub fn listen(state_dir: &Path) -> Result<mpsc::Receiver<Request>> {
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
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(stream, tx).await {
                    warn!("control socket: {e:#}");
                }
            });
        }
    });
    info!("control socket {}", path.display());
    Ok(rx)
}

async fn serve(stream: UnixStream, tx: mpsc::Sender<Request>) -> Result<()> {
    let uid = stream.peer_cred().context("reading the peer's credentials")?.uid();
    let (read, mut write) = stream.into_split();
    let reply = if uid != 0 {
        ApplyReply { refused: true, errors: vec![format!("uid {uid} may not change the agent's config (root only)")], ..Default::default() }
    } else {
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        let apply: ApplyRequest = serde_json::from_str(&line).context("reading the request")?;
        let (reply, answer) = oneshot::channel();
        tx.send(Request { apply, reply }).await.context("the agent is stopping")?;
        answer.await.context("the agent is stopping")?
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Asks the agent running over `state_dir` to apply `config`; waits for its answer.
pub async fn request_apply(state_dir: &Path, config: &Path) -> Result<ApplyReply> {
    let path = StateDir::control_socket(state_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => bail!("no agent is running over {} ({}: {e})", state_dir.display(), path.display()),
    };
    let config = std::fs::canonicalize(config).with_context(|| format!("reading {}", config.display()))?;
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(&ApplyRequest { config })?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line).context("the agent's answer")
}
