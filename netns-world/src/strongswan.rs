//! The clouds' IKEv2 responders (strongSwan's charon), written once for the demo and the
//! VPN tests. Each runs in its own directory, with that directory's `run/` bind-mounted
//! over /run in the private mount namespace of `ip netns exec`, so that several charons
//! (the clouds', and the agent's per VPN NI) never share a pid file or socket.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{spawn_in, wait_until};

/// An IKEv2 responder in netns `ns`: PSK `psk` from any peer, tunnel `local_ts` ===
/// `remote_ts`, on `backend` ("kernel": xfrm; "libipsec": strongSwan's userspace ESP,
/// for kernels without ESP).
#[derive(Clone, Copy, Debug)]
pub struct Responder<'a> {
    pub ns: &'a str,
    /// Its files: strongswan.conf, swanctl.conf, charon.log, charon.vici and run/.
    pub dir: &'a Path,
    pub local_addr: &'a str,
    pub psk: &'a str,
    pub local_ts: &'a str,
    pub remote_ts: &'a str,
    pub backend: &'a str,
}

impl Responder<'_> {
    /// Writes its config, starts charon (into `children`, whose owner kills it), waits up
    /// to `timeout` for its vici socket and loads the connection. Returns swanctl's report.
    pub fn start(&self, children: &mut Vec<Child>, timeout: Duration) -> Result<String> {
        self.write_config()?;
        let charon = format!(
            "mount --bind {} /run && STRONGSWAN_CONF={} exec /usr/lib/ipsec/charon",
            self.dir.join("run").display(),
            self.dir.join("strongswan.conf").display()
        );
        children.push(spawn_in(self.ns, &["sh", "-c", &charon])?);
        let vici = self.vici();
        if !wait_until(timeout, || vici.exists()) {
            bail!("the IKE responder in {} did not start (see {})", self.ns, self.dir.join("charon.log").display());
        }
        let load = Command::new("swanctl")
            .args(["--load-all", "--noprompt", "--file"])
            .arg(self.dir.join("swanctl.conf"))
            .arg("--uri")
            .arg(format!("unix://{}", vici.display()))
            .output()
            .context("running swanctl")?;
        let report = String::from_utf8_lossy(&load.stdout).into_owned();
        if !load.status.success() {
            bail!("loading the responder of {}: {report}{}", self.ns, String::from_utf8_lossy(&load.stderr));
        }
        Ok(report)
    }

    fn vici(&self) -> PathBuf {
        self.dir.join("charon.vici")
    }

    /// Its directory and config; a vici socket left by an earlier run goes (its presence is
    /// how `start` knows that charon is up).
    fn write_config(&self) -> Result<()> {
        let context = || format!("writing the responder's config in {}", self.dir.display());
        std::fs::create_dir_all(self.dir.join("run")).with_context(context)?;
        let _ = std::fs::remove_file(self.vici());
        std::fs::write(self.dir.join("strongswan.conf"), self.strongswan_conf()).with_context(context)?;
        std::fs::write(self.dir.join("swanctl.conf"), self.swanctl_conf()).with_context(context)
    }

    fn strongswan_conf(&self) -> String {
        let libipsec = if self.backend == "libipsec" { "kernel-libipsec " } else { "" };
        format!(
            "charon {{\n  load = random nonce aes sha1 sha2 hmac kdf gmp pem pkcs1 x509 pubkey {libipsec}kernel-netlink socket-default vici updown\n  \
             plugins {{ vici {{ socket = unix://{} }} }}\n  filelog {{ main {{ path = {}\n    default = 1\n    flush_line = yes }} }}\n}}\n",
            self.vici().display(),
            self.dir.join("charon.log").display()
        )
    }

    fn swanctl_conf(&self) -> String {
        let Responder { local_addr, psk, local_ts, remote_ts, .. } = self;
        format!(
            "connections {{ gw {{ version = 2\n  local_addrs = {local_addr}\n  remote_addrs = %any\n  proposals = aes256-sha1-modp2048\n  \
             local {{ auth = psk\n    id = {local_addr} }}\n  remote {{ auth = psk }}\n  \
             children {{ gw {{ local_ts = {local_ts}\n    remote_ts = {remote_ts}\n    esp_proposals = aes128-sha1 }} }} }} }}\n\
             secrets {{ ike-any {{ secret = \"{psk}\" }} }}\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responder(backend: &str) -> Responder<'_> {
        Responder {
            ns: "cloud1",
            dir: Path::new("/tmp/swan-cloud1"),
            local_addr: "192.168.111.1",
            psk: "cloud1-secret",
            local_ts: "192.168.0.0/24",
            remote_ts: "10.10.10.0/24",
            backend,
        }
    }

    #[test]
    fn the_backend_picks_the_esp_plugin() {
        assert!(responder("libipsec").strongswan_conf().contains("pubkey kernel-libipsec kernel-netlink"));
        let kernel = responder("kernel").strongswan_conf();
        assert!(kernel.contains("pubkey kernel-netlink") && !kernel.contains("libipsec"));
        assert!(kernel.contains("socket = unix:///tmp/swan-cloud1/charon.vici"));
        assert!(kernel.contains("path = /tmp/swan-cloud1/charon.log"));
    }

    #[test]
    fn the_connection_has_its_address_selectors_and_secret() {
        let conf = responder("kernel").swanctl_conf();
        for line in [
            "local_addrs = 192.168.111.1",
            "id = 192.168.111.1",
            "local_ts = 192.168.0.0/24",
            "remote_ts = 10.10.10.0/24",
            "secret = \"cloud1-secret\"",
        ] {
            assert!(conf.contains(line), "{line} in\n{conf}");
        }
    }
}
