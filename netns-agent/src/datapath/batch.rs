//! Batched writes and deletes of hash map entries (BPF_MAP_UPDATE_BATCH and
//! BPF_MAP_DELETE_BATCH, Linux 5.6+): one system call for many entries, where aya's maps
//! make one per entry. A 10,000-ACE ACL is about 20,000 entries; one call each took most
//! of an ACL swap's time.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use aya::{maps::MapData, Pod};

const BPF_MAP_UPDATE_BATCH: nix::libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: nix::libc::c_long = 27;

/// `union bpf_attr`'s member for the batch commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: how many entries; out: how many were done.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A pinned hash map, opened for batch operations (its typed handle, which checked the
/// key and value sizes, is the caller's).
pub struct BatchMap {
    data: MapData,
    name: &'static str,
}

impl BatchMap {
    pub fn open(pin_dir: &std::path::Path, name: &'static str) -> Result<BatchMap> {
        let path = pin_dir.join(name);
        let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        Ok(BatchMap { data, name })
    }

    /// Writes every (key, value). On an error some may have been written: the caller
    /// removes them all.
    pub fn insert_all<K: Pod, V: Pod>(&self, entries: &[(K, V)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let (keys, values): (Vec<K>, Vec<V>) = entries.iter().copied().unzip();
        let mut attr = self.attr(&keys);
        attr.values = values.as_ptr() as u64;
        if let Err(e) = self.call(BPF_MAP_UPDATE_BATCH, &mut attr) {
            bail!("writing {} entries of {} ({} written): {e}", keys.len(), self.name, attr.count);
        }
        Ok(())
    }

    /// Removes every key of `keys` there is (a missing key stops a batch: the rest go
    /// on in the next).
    pub fn remove_all<K: Pod>(&self, keys: &[K]) {
        let mut done = 0;
        while done < keys.len() {
            let mut attr = self.attr(&keys[done..]);
            if self.call(BPF_MAP_DELETE_BATCH, &mut attr).is_ok() {
                return;
            }
            // `count` went; the next one failed: skip it.
            done += attr.count as usize + 1;
        }
    }

    fn attr<K>(&self, keys: &[K]) -> BatchAttr {
        BatchAttr {
            keys: keys.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: self.data.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        }
    }

    fn call(&self, cmd: nix::libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
        // SAFETY: `attr` is a valid bpf_attr prefix for the batch commands; the keys and
        // values it points to outlive the call and hold `count` entries of the map's
        // key and value sizes (the typed handles checked them against K and V).
        let rc =
            unsafe { nix::libc::syscall(nix::libc::SYS_bpf, cmd, attr as *mut BatchAttr, size_of::<BatchAttr>() as nix::libc::c_uint) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
