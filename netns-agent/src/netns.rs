//! Network namespaces: named ones under /run/netns (as `ip netns` keeps them), and running
//! code inside one.
//!
//! Only short-lived dedicated threads ever enter another namespace; the main thread and the
//! tokio workers stay in the agent's own. Sockets created inside keep their namespace.

use std::{
    fs::File,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};
use tracing::debug;

const NETNS_RUN_DIR: &str = "/run/netns";

/// An open handle on a network namespace.
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Netns> {
        let file = File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
        Ok(Netns { file, path: path.to_path_buf() })
    }

    /// The calling thread's namespace: the agent's own when called from the main thread.
    pub fn current() -> Result<Netns> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A name is looked up under /run/netns; anything with a '/' is a path.
pub fn resolve(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new(NETNS_RUN_DIR).join(name_or_path)
    }
}

pub fn exists(name: &str) -> bool {
    resolve(name).exists()
}

/// Runs `f` on a dedicated thread that has entered `ns`; the caller's thread never moves.
pub fn run_in<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {}", ns.path.display()))?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in netns {} panicked", ns.path.display()))?
    })
}

/// Creates a named netns like `ip netns add NAME`: a new namespace kept alive by a bind
/// mount on /run/netns/NAME (itself a shared mount, so other mount namespaces see it).
pub fn create_named(name: &str) -> Result<Netns> {
    let run_dir = Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {NETNS_RUN_DIR}"))?;
    ensure_shared_mount(run_dir)?;
    let path = run_dir.join(name);
    File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {} (does the netns exist already?)", path.display()))?;
    let created = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            mount(Some("/proc/thread-self/ns/net"), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .with_context(|| format!("bind-mounting the new netns on {}", path.display()))
        })
        .join()
        .map_err(|_| anyhow!("netns creation thread panicked"))?
    });
    if let Err(e) = created {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    debug!(name, "netns created");
    Netns::open(&path)
}

/// Removes a named netns (`ip netns del`); Ok(false) if it did not exist.
pub fn delete_named(name: &str) -> Result<bool> {
    let path = resolve(name);
    if !path.exists() {
        return Ok(false);
    }
    // EINVAL: not a mount point (a stale file); remove it all the same.
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", path.display())),
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    debug!(name, "netns deleted");
    Ok(true)
}

/// The processes inside each named netns of `names` that has any (what `ip netns pids`
/// finds: /proc/PID/ns/net is that netns), by name; one pass over /proc.
pub fn processes_in(names: &[&str]) -> std::collections::HashMap<String, Vec<u32>> {
    use std::os::unix::fs::MetadataExt as _;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let wanted: Vec<(&str, (u64, u64))> = names.iter().filter_map(|n| Some((*n, id(&resolve(n))?))).collect();
    let mut found: std::collections::HashMap<String, Vec<u32>> = Default::default();
    if wanted.is_empty() {
        return found;
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Some(ns) = id(&entry.path().join("ns/net")) else { continue };
        if let Some((name, _)) = wanted.iter().find(|(_, w)| *w == ns) {
            found.entry(name.to_string()).or_default().push(pid);
        }
    }
    found
}

/// Makes `dir` a shared mount point as iproute2 does, so netns mounts under it propagate.
fn ensure_shared_mount(dir: &Path) -> Result<()> {
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, dir, None::<&str>, shared, None::<&str>).is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first.
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("bind-mounting {}", dir.display()))?;
    mount(None::<&str>, dir, None::<&str>, shared, None::<&str>).with_context(|| format!("making {} a shared mount", dir.display()))
}

/// Sets a sysctl under /proc/sys (e.g. "net/ipv4/ip_forward") as seen from inside `ns`
/// (net sysctls resolve against the thread's namespace): written only when it differs,
/// so an apply that changes nothing writes nothing (a write of "all" walks every link).
pub fn write_sysctl(ns: &Netns, key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    run_in(ns, || {
        if std::fs::read_to_string(&path).is_ok_and(|had| had.trim() == value) {
            return Ok(());
        }
        std::fs::write(&path, value).with_context(|| format!("writing {} in netns {}", path.display(), ns.path.display()))?;
        debug!(key, value, netns = %ns.path.display(), "sysctl set");
        Ok(())
    })
}

/// Makes `cmd` run inside `ns`: the child enters it between fork and exec.
pub fn exec_in(cmd: &mut tokio::process::Command, ns: &Netns) {
    use std::os::fd::AsRawFd as _;
    let fd = ns.as_fd().as_raw_fd();
    // SAFETY: only setns(2), async-signal-safe, between fork and exec; the caller keeps
    // `ns` (and so the fd) open until the child is spawned.
    unsafe {
        cmd.pre_exec(move || setns(BorrowedFd::borrow_raw(fd), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
}
