//! The helper programs of the world, as real files (`py/`, `sh/`) so they can be read,
//! run and linted as what they are, embedded with `include_str!` rather than read at run
//! time: the demo's xtask binary and the test binaries stay self-contained wherever they
//! run (the VM stage too), and the programs still start as `python3 -c <program>` exactly
//! as before.

use std::path::Path;

use anyhow::{Context, Result};

/// The seed's internet DNS server on [`crate::DNS_SERVER_IP`]: github.com, api.github.com,
/// zededa.com -> 10.99.0.10, google.com -> 10.98.0.10. Run with `python3 -c`.
pub const MOCK_DNS: &str = include_str!("../py/mock_dns.py");

/// A static-file HTTP server: `python3 -c HTTP_SERVER ip port root` (not `-m http.server`,
/// which looks up its own name in DNS at start).
pub const HTTP_SERVER: &str = include_str!("../py/http_server.py");

/// The hypervisor of the demo's VM app3: taps nbu1x3 in zedbox and eth0 in app3, frames
/// relayed between them; prints "ready" once both exist. Run with `python3 -c` on the host.
pub const VM_RELAY: &str = include_str!("../py/vm_relay.py");

/// busybox udhcpc's script: applies a lease as a DHCP client daemon would. Written to a
/// file (mode 0755) and named with `udhcpc -s`.
pub const UDHCPC_SCRIPT: &str = include_str!("../sh/udhcpc.sh");

/// Writes [`UDHCPC_SCRIPT`] to `path`, executable, for `udhcpc -s <path>`.
pub fn write_udhcpc_script(path: &Path) -> Result<()> {
    std::fs::write(path, UDHCPC_SCRIPT).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_programs_are_embedded() {
        assert!(MOCK_DNS.contains("s.bind((\"10.99.0.53\", 53))"));
        assert!(HTTP_SERVER.contains("SimpleHTTPRequestHandler"));
        assert!(VM_RELAY.contains("print(\"ready\", flush=True)"));
        assert!(UDHCPC_SCRIPT.starts_with("#!/bin/sh\n"));
    }
}
