//! Batched reads, writes and deletes of hash map entries (BPF_MAP_LOOKUP_BATCH,
//! BPF_MAP_UPDATE_BATCH and BPF_MAP_DELETE_BATCH, Linux 5.6+): one system call for
//! thousands of entries, where aya's maps make one per entry (two per entry to walk a
//! map). A 10,000-ACE ACL is about 20,000 entries; one call each took most of an ACL
//! swap's time. The sweep reads the flow maps (up to 200,000 entries) every second
//! under load; and takes an expired entry out with what it held in one call
//! (BPF_MAP_LOOKUP_AND_DELETE_ELEM, Linux 5.14+).

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use aya::{maps::MapData, Pod};

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: nix::libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: nix::libc::c_long = 24;
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

/// `union bpf_attr`'s member for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Entries a batched read asks for at a time (more when a hash bucket holds more).
const READ_BATCH: usize = 4096;

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

    /// Every entry of the map, read in batches. Entries that programs add or remove
    /// meanwhile may be in it or not, as with any walk.
    pub fn entries<K: Pod, V: Pod>(&self) -> Result<Vec<(K, V)>> {
        let mut out = Vec::new();
        let mut batch = READ_BATCH;
        // The kernel's position token (a bucket index for hash maps); none: the start.
        let mut token: Option<u64> = None;
        loop {
            let mut keys: Vec<K> = Vec::with_capacity(batch);
            let mut values: Vec<V> = Vec::with_capacity(batch);
            let mut next = 0u64;
            let mut attr = BatchAttr {
                in_batch: token.as_ref().map_or(0, |t| t as *const u64 as u64),
                out_batch: &mut next as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: batch as u32,
                map_fd: self.data.fd().as_fd().as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            let result = self.call(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let n = (attr.count as usize).min(batch);
            // SAFETY: the kernel wrote `n` whole keys and values (plain data, any bit
            // pattern valid) into the reserved room.
            unsafe {
                keys.set_len(n);
                values.set_len(n);
            }
            out.extend(keys.into_iter().zip(values));
            match result {
                Ok(()) => token = Some(next),
                // The end: what this call read is the last of it.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(out),
                // A bucket holds more entries than asked for: ask for more.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) && n == 0 && batch < 1 << 20 => batch *= 2,
                Err(e) => bail!("reading {} in batches: {e}", self.name),
            }
        }
    }

    /// Takes `key`'s entry out of the map and returns what it held (None: there was none).
    pub fn take<K: Pod, V: Pod>(&self, key: &K) -> Option<V> {
        let mut value = std::mem::MaybeUninit::<V>::uninit();
        let mut attr = ElemAttr {
            map_fd: self.data.fd().as_fd().as_raw_fd() as u32,
            key: key as *const K as u64,
            value: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        // SAFETY: a valid bpf_attr prefix for the command; key and value are of the map's
        // sizes (the typed handle checked them against K and V) and outlive the call.
        let rc = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &mut attr as *mut ElemAttr,
                size_of::<ElemAttr>() as nix::libc::c_uint,
            )
        };
        // SAFETY: on success the kernel wrote the whole value (plain data).
        (rc == 0).then(|| unsafe { value.assume_init() })
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
