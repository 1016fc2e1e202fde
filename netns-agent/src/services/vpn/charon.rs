//! One charon per VPN NI inside the NI's netns, with a private /run, supervised: started,
//! the tunnel loaded with swanctl and initiated, restarted when it exits, initiated again
//! when no IKE_SA is left; its log lines become the tunnel's last error.

use std::{
    ffi::CString,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::watch,
};
use tracing::{debug, info, warn};

use super::{
    classify_log_line, conf, instance_dir, run_dir, vici, vici_path, Supervision, CHARON, CHECK_INTERVAL, REINITIATE_AFTER, VICI_WAIT,
};
use crate::{
    config::VpnBackend,
    netns::Netns,
    plan::VpnPlan,
    services::supervise::{Life, Supervised},
};

/// A running, supervised charon.
pub struct Charon(Supervised);

impl Charon {
    /// Writes the instance's files and starts supervising charon in `ns`.
    pub fn spawn(ni: &str, vpn: &VpnPlan, state_dir: &Path, ns: Netns) -> Result<Charon> {
        let dir = instance_dir(state_dir, ni);
        let run = run_dir(&dir);
        std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
        std::fs::write(run.join("strongswan.conf"), conf::strongswan_conf(vpn.backend))?;
        let swanctl = run.join("swanctl.conf");
        // Holds the PSK.
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&swanctl)?;
            std::io::Write::write_all(&mut f, conf::swanctl_conf(vpn).as_bytes())
                .with_context(|| format!("writing {}", swanctl.display()))?;
        }
        let status = Supervision { ni: ni.to_string(), remote: vpn.remote.to_string(), backend: vpn.backend, ..Default::default() };
        status.write(&dir);
        let status = Arc::new(Mutex::new(status));
        let (backend, ns) = (vpn.backend, Arc::new(ns));
        Ok(Charon(Supervised::spawn(move |stopped| life(dir.clone(), backend, ns.clone(), status.clone(), stopped))))
    }

    /// Stops charon (it removes its SAs, routes and TUN on SIGTERM) and waits for it.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// One life of charon for the supervisor, its end recorded in the instance's status.
async fn life(
    dir: PathBuf,
    backend: VpnBackend,
    ns: Arc<Netns>,
    status: Arc<Mutex<Supervision>>,
    mut stopped: watch::Receiver<bool>,
) -> Life {
    let ni = status.lock().unwrap().ni.clone();
    match run_once(&dir, backend, &ns, &status, &mut stopped).await {
        Ok(Stop::Requested) => return Life::Stopped,
        Ok(Stop::Exited(how)) => {
            warn!("{ni}: charon exited ({how}); starting it again");
            let mut s = status.lock().unwrap();
            s.pid = None;
            s.restarts += 1;
            s.last_error = Some(format!("charon exited ({how}); restarted"));
            s.write(&dir);
        }
        Err(e) => {
            warn!("{ni}: {e:#}");
            let mut s = status.lock().unwrap();
            s.last_error = Some(format!("{e:#}"));
            s.write(&dir);
        }
    }
    Life::Ended
}

enum Stop {
    Requested,
    Exited(String),
}

/// One life of charon: start, load, then watch until it exits or the agent stops.
async fn run_once(
    dir: &Path,
    backend: VpnBackend,
    ns: &Netns,
    status: &Arc<Mutex<Supervision>>,
    stopped: &mut watch::Receiver<bool>,
) -> Result<Stop> {
    let (ni, remote) = {
        let s = status.lock().unwrap();
        (s.ni.clone(), s.remote.clone())
    };
    if backend == VpnBackend::Kernel {
        // SAs and policies of a charon that died unclean would shadow the new ones.
        for what in ["state", "policy"] {
            let mut cmd = Command::new("ip");
            cmd.args(["xfrm", what, "flush"]).stdout(Stdio::null()).stderr(Stdio::null());
            crate::netns::exec_in(&mut cmd, ns);
            let _ = cmd.status().await;
        }
    }
    let vici = vici_path(dir);
    let _ = std::fs::remove_file(&vici);
    let _ = std::fs::remove_file(run_dir(dir).join("charon.pid"));
    let mut child = start_charon(dir, ns)?;
    let pid = child.id().unwrap_or(0);
    info!("{ni}: charon started (pid {pid}), tunnel to {remote}");
    {
        let mut s = status.lock().unwrap();
        s.pid = Some(pid);
        s.write(dir);
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(follow_log(err, status.clone(), dir.to_path_buf()));
    }

    let mut client = match connect_vici(&mut child, &vici).await? {
        Ok(client) => client,
        Err(exited) => return Ok(Stop::Exited(exited.to_string())),
    };
    let loaded = load_tunnel(dir, &vici, status).await?;

    let mut last_initiate = Instant::now();
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            st = child.wait() => return Ok(Stop::Exited(st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
            _ = stopped.changed() => {
                terminate(&mut child).await;
                let mut s = status.lock().unwrap();
                s.pid = None;
                s.write(dir);
                info!("{ni}: charon stopped");
                return Ok(Stop::Requested);
            }
            _ = check.tick() => {
                if !loaded || last_initiate.elapsed() < REINITIATE_AFTER {
                    continue;
                }
                match vici::list_sas(&mut client).await {
                    Ok(sas) if sas.is_empty() => {
                        info!("{ni}: no IKE_SA with {remote}; initiating again");
                        last_initiate = Instant::now();
                        if let Err(e) = vici::initiate(&mut client).await {
                            warn!("{ni}: initiating: {e:#}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => debug!("{ni}: listing SAs: {e:#}"),
                }
            }
        }
    }
}

/// charon's log lines (stderr): debug, and what they mean for the tunnel into its status.
async fn follow_log(err: tokio::process::ChildStderr, status: Arc<Mutex<Supervision>>, dir: PathBuf) {
    let (ni, remote) = {
        let s = status.lock().unwrap();
        (s.ni.clone(), s.remote.clone())
    };
    let mut lines = BufReader::new(err).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        debug!("{ni}: charon: {line}");
        match classify_log_line(&line, &remote) {
            None => {}
            Some(Ok(event)) => {
                info!("{ni}: {event}");
                let mut s = status.lock().unwrap();
                s.last_error = None;
                s.write(&dir);
            }
            Some(Err(problem)) => {
                let mut s = status.lock().unwrap();
                if s.last_error.as_deref() != Some(problem.as_str()) {
                    warn!("{ni}: {problem}");
                    s.last_error = Some(problem);
                    s.write(&dir);
                }
            }
        }
    }
}

/// Waits for charon's vici socket (charon watched meanwhile): its exit status when
/// charon exited first; an error (charon terminated) after `VICI_WAIT`.
async fn connect_vici(child: &mut tokio::process::Child, vici: &Path) -> Result<Result<rsvici::Client, std::process::ExitStatus>> {
    let deadline = Instant::now() + VICI_WAIT;
    loop {
        if let Ok(c) = rsvici::unix::connect(vici).await {
            return Ok(Ok(c));
        }
        if let Some(exited) = child.try_wait()? {
            return Ok(Err(exited));
        }
        if Instant::now() > deadline {
            terminate(child).await;
            bail!("charon did not open its vici socket {} within {VICI_WAIT:?}", vici.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `swanctl --load-all` over the socket: true when charon took the tunnel config. A
/// config charon rejects will not fix itself: it is reported in the status, charon is
/// kept, and no restart loop follows.
async fn load_tunnel(dir: &Path, vici: &Path, status: &Arc<Mutex<Supervision>>) -> Result<bool> {
    let load = Command::new("swanctl")
        .args(["--load-all", "--noprompt", "--file"])
        .arg(run_dir(dir).join("swanctl.conf"))
        .arg("--uri")
        .arg(format!("unix://{}", vici.display()))
        .stdin(Stdio::null())
        .output()
        .await
        .context("running swanctl (is strongswan-swanctl installed?)")?;
    let mut s = status.lock().unwrap();
    if load.status.success() {
        info!("{}: tunnel config loaded; initiating", s.ni);
        return Ok(true);
    }
    let out = String::from_utf8_lossy(&load.stdout).into_owned() + &String::from_utf8_lossy(&load.stderr);
    let why = out.lines().filter(|l| !l.contains("plugin") && !l.contains("opening directory")).collect::<Vec<_>>().join("; ");
    s.last_error = Some(format!("charon rejected the tunnel config: {why}"));
    warn!("{}: {}", s.ni, s.last_error.as_deref().unwrap_or_default());
    s.write(dir);
    Ok(false)
}

fn start_charon(dir: &Path, ns: &Netns) -> Result<tokio::process::Child> {
    let run = CString::new(run_dir(dir).as_os_str().as_bytes()).context("instance dir")?;
    let mut cmd = Command::new(CHARON);
    cmd.env("STRONGSWAN_CONF", "/run/strongswan.conf").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let fd = ns.as_fd().as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe syscalls (setns, unshare,
    // mount) on data prepared before the fork; the netns fd outlives the supervisor.
    unsafe {
        cmd.pre_exec(move || {
            use nix::libc;
            let check = |rc: libc::c_int| if rc == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            // A private mount namespace whose /run is the instance's: charon's pid file
            // (hard-coded /var/run/charon.pid) and sockets do not collide across NIs.
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(run.as_ptr(), c"/run".as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {CHARON} (is strongswan-charon installed?)"))
}

/// SIGTERM, then SIGKILL if charon takes longer than 5 s; always reaped.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Stops a charon left running by an agent that did not stop cleanly (for `down`).
pub fn kill_leftover(state_dir: &Path, ni: &str) -> Option<i32> {
    let pid = Supervision::read(&instance_dir(state_dir, ni)).and_then(|s| s.pid)?;
    let is_charon = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p == Path::new(CHARON)).unwrap_or(false);
    if is_charon {
        info!("{ni}: stopping charon (pid {pid}) left by an earlier agent");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        return Some(pid as i32);
    }
    None
}
