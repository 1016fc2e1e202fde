//! VPN NIs (the seed's NI4 and NI5): one charon per NI in its netns, two tunnels with
//! identical selectors to two clouds at once, real strongSwan responders, supervision,
//! and what a user sees when a peer rejects or ignores us.

use std::{process::Command, time::Duration};

use netns_agent::services::vpn::{Supervision, TunnelState, TunnelStatus};
use netns_tests::{scaled, vpn_backend, wait_until, Scenario, CLOUD_LAN_IP, INET_IP};

/// NI4 and NI5 as in the seed: the same subnet, each through its own uplink to its cloud.
fn two_vpns(backend: &str) -> String {
    let mut config = String::from("[[uplink]]\nname = \"eth1\"\n\n[[uplink]]\nname = \"eth2\"\n");
    for (ni, index, uplink, remote, psk) in
        [("@ni4", 4, "eth1", "192.168.111.1", "cloud1-psk"), ("@ni5", 5, "eth2", "192.168.222.1", "cloud2-psk")]
    {
        config += &format!(
            r#"
[[network]]
name = "{ni}"
kind = "vpn"
index = {index}
subnet = "10.10.10.0/24"
gateway = "10.10.10.1"
uplink = "{uplink}"
[network.vpn]
remote = "{remote}"
psk = "{psk}"
remote_ts = ["192.168.0.0/24"]
ike_proposals = "aes256-sha1-modp2048"
esp_proposals = "aes128-sha1"
backend = "{backend}"
"#
        );
    }
    for (app, ni, ip) in [("@app4", "@ni4", "10.10.10.4"), ("@app5", "@ni5", "10.10.10.5")] {
        config += &format!(
            r#"
[[app]]
name = "{app}"
netns = "{app}"
[[app.interface]]
network = "{ni}"
ip = "{ip}"
acl = [{{ id = 1, match = {{ ip = "192.168.0.0/24", protocol = "tcp" }} }}]
"#
        );
    }
    config
}

/// Deterministic, distinct content per cloud.
fn blob(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4] ^ seed).collect()
}

fn tunnel(s: &Scenario, ni: &str) -> Option<TunnelStatus> {
    s.network_status(ni).and_then(|n| n.tunnel)
}

/// What the agent's supervisor says of the NI's charon.
fn supervision(s: &Scenario, ni: &str) -> Option<Supervision> {
    tunnel(s, ni).and_then(|t| t.supervision)
}

fn is_up(s: &Scenario, ni: &str) -> bool {
    tunnel(s, ni).is_some_and(|t| t.state == TunnelState::Up)
}

/// Without its tunnel, an app's traffic to the remote selectors is refused at once
/// (EHOSTUNREACH), never sent in the clear.
fn assert_cloud_unreachable(s: &Scenario, app: &str) {
    let code = "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 80), timeout=5)\nexcept OSError as e:\n print(e.errno)";
    let out = s.python(app, code, &[CLOUD_LAN_IP]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "113", "EHOSTUNREACH without the tunnel");
}

fn wait_up(s: &Scenario, ni: &str, secs: u64) {
    wait_until(scaled(Duration::from_secs(secs)), || is_up(s, ni))
        .unwrap_or_else(|| panic!("tunnel of {ni} not up: {:#?}\n{}", tunnel(s, ni), s.agent_log()));
}

/// Starts `curl` for http://CLOUD_LAN_IP/<file> in each app at once; returns the bodies.
fn fetch_all(s: &Scenario, requests: &[(&str, &str)]) -> Vec<Vec<u8>> {
    let children: Vec<_> = requests
        .iter()
        .map(|(ns, file)| {
            Command::new("ip")
                .args(["netns", "exec", ns, "curl", "-sS", "--max-time", &scaled(Duration::from_secs(30)).as_secs().to_string()])
                .arg(format!("http://{CLOUD_LAN_IP}/{file}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "curl failed: {}\n{}", String::from_utf8_lossy(&out.stderr), s.agent_log());
            out.stdout
        })
        .collect()
}

#[test]
fn two_tunnels_with_identical_selectors_carry_each_apps_traffic() {
    let backend = vpn_backend();
    let mut s = Scenario::with_uplinks(&["ni4", "ni5"], &["app4", "app5"], 3, &two_vpns(&backend));
    let (one, two) = (blob(1, 300_000), blob(2, 300_000));
    assert_ne!(one, two);
    let cloud1 = s.add_cloud(1, "192.168.111.1", &[("data", &one)]);
    let cloud2 = s.add_cloud(2, "192.168.222.1", &[("data", &two)]);
    s.strongswan_responder(&cloud1, "192.168.111.1", "cloud1-psk", "192.168.0.0/24", "10.10.10.0/24");
    s.strongswan_responder(&cloud2, "192.168.222.1", "cloud2-psk", "192.168.0.0/24", "10.10.10.0/24");
    // Tells each connection's source address: the app's own, not a translation.
    s.whoami_server(&cloud1, CLOUD_LAN_IP, 8081);
    s.start_agent();
    let (ni4, ni5, app4, app5) = (s.ni("ni4").to_string(), s.ni("ni5").to_string(), s.app("app4").to_string(), s.app("app5").to_string());
    wait_up(&s, &ni4, 30);
    wait_up(&s, &ni5, 30);
    let t4 = tunnel(&s, &ni4).expect("NI4's tunnel");
    assert_eq!(t4.local_ts.first().map(String::as_str), Some("10.10.10.0/24"), "{t4:#?}");
    assert_eq!(t4.remote_ts.first().map(String::as_str), Some("192.168.0.0/24"), "{t4:#?}");
    assert_eq!(t4.encap.as_deref(), Some("TUNNEL-in-UDP"), "NAT-T through the uplink's NAT: {t4:#?}");
    assert!(t4.remote.as_deref().unwrap().contains("192.168.111.1"), "{t4:#?}");
    assert!(tunnel(&s, &ni5).and_then(|t| t.remote).unwrap().contains("192.168.222.1"));

    // Both apps at the same time, same destination address, each its own cloud's data.
    let bodies = fetch_all(&s, &[(&app4, "data"), (&app5, "data")]);
    // The flows read now (checked below): a closed flow's entry goes 10 s after it
    // closed, which the checks in between may take in the emulated VM.
    let flows = s.flows();
    assert!(bodies[0] == one, "app4 got {} bytes, not cloud1's data", bodies[0].len());
    assert!(bodies[1] == two, "app5 got {} bytes, not cloud2's data", bodies[1].len());
    // Encrypted end to end: the cloud sees the app's address, never the NI's SNAT.
    let seen = s.whoami(&app4, CLOUD_LAN_IP, 8081).expect("whoami through the tunnel");
    assert!(seen.starts_with("10.10.10.4:"), "cloud1 saw {seen}");
    // Which IPsec carried it: the kernel's xfrm states in the NI's netns, or (libipsec)
    // none there, charon's userspace ESP instead.
    let xfrm = Command::new("ip").args(["-n", &ni4, "xfrm", "state"]).output().unwrap();
    let xfrm = String::from_utf8_lossy(&xfrm.stdout);
    if backend == "kernel" {
        assert!(xfrm.matches("proto esp").count() >= 2, "kernel backend: ESP SAs in xfrm expected:\n{xfrm}");
    } else {
        assert!(!xfrm.contains("proto esp"), "libipsec backend: no kernel SAs expected:\n{xfrm}");
    }
    let t4 = tunnel(&s, &ni4).expect("NI4's tunnel");
    assert!(t4.bytes_in > one.len() as u64, "ESP bytes in: {t4:#?}");
    // A VPN NI's packets take the kernel's path (its xfrm policy), fast path or not:
    // the apps' and charon's own (ESP in UDP through the uplink's NAT).
    for name in netns_tests::fast_path_counters() {
        assert_eq!(s.counter(name), 0, "{name}: VPN NIs have no fast path");
    }
    assert!(t4.packets_out > 0, "{t4:#?}");

    // The flows show the apps' traffic (in their NIs' zones, by app).
    for (app, len) in [(&app4, one.len()), (&app5, two.len())] {
        let f = flows
            .iter()
            .find(|f| f.app == *app && f.dst == CLOUD_LAN_IP && f.dport == 80)
            .unwrap_or_else(|| panic!("no flow of {app} to the cloud: {flows:#?}"));
        assert!(f.bytes_reply > len as u64, "{f:#?}");
        assert!(f.translated.is_empty(), "tunnelled flows are not translated: {f:#?}");
    }

    // charon of NI4 dies: the agent notices, starts it again, the tunnel comes back.
    let old_pid = supervision(&s, &ni4).and_then(|v| v.pid).expect("charon pid");
    assert!(Command::new("kill").args(["-KILL", &old_pid.to_string()]).status().unwrap().success());
    wait_until(scaled(Duration::from_secs(20)), || {
        supervision(&s, &ni4).is_some_and(|v| v.restarts == 1 && v.pid.is_some_and(|p| p != old_pid))
    })
    .unwrap_or_else(|| panic!("charon not restarted: {:#?}\n{}", tunnel(&s, &ni4), s.agent_log()));
    wait_up(&s, &ni4, 30);
    assert!(s.agent_log().contains("charon exited"), "{}", s.agent_log());
    let bodies = fetch_all(&s, &[(&app4, "data")]);
    assert!(bodies[0] == one, "after the restart app4 got {} bytes", bodies[0].len());
    // NI5 was not disturbed.
    assert_eq!(supervision(&s, &ni5).map(|v| v.restarts), Some(0));

    // The agent stops (charon with it): the selectors are unreachable, never sent in the
    // clear through the NI's source NAT.
    s.stop_agent();
    assert_cloud_unreachable(&s, &app4);

    assert!(s.down().status.success());
    assert_eq!(s.leftovers(), Vec::<String>::new());
    assert!(!s.state_dir.join(format!("vpn-{ni4}")).exists());
}

#[test]
fn rejected_and_unreachable_peers_show_in_status_and_leave_other_nis_alone() {
    let backend = vpn_backend();
    let config = two_vpns(&backend)
        // NI4's key is not cloud1's; NI5's peer is gw's own address, where no IKE runs.
        .replace("psk = \"cloud1-psk\"", "psk = \"not-the-key\"")
        .replace("remote = \"192.168.222.1\"", "remote = \"192.168.2.1\"")
        + r#"
[[uplink]]
name = "eth0"

[[network]]
name = "@ni1"
kind = "local"
index = 1
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
uplink = "eth0"

[[app]]
name = "@app1"
netns = "@app1"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.2"
acl = [{ id = 1, match = { protocol = "tcp", fport = 8080 } }]
"#;
    let mut s = Scenario::with_uplinks(&["ni1", "ni4", "ni5"], &["app1", "app4", "app5"], 3, &config);
    let cloud1 = s.add_cloud(1, "192.168.111.1", &[("data", b"cloud1")]);
    s.strongswan_responder(&cloud1, "192.168.111.1", "cloud1-psk", "192.168.0.0/24", "10.10.10.0/24");
    let inet = s.inet.clone();
    s.whoami_server(&inet, INET_IP, 8080);

    // First a config with a VPN key missing: a clear error, nothing created.
    let good = std::fs::read_to_string(&s.config_path).unwrap();
    std::fs::write(&s.config_path, good.replacen("psk = \"not-the-key\"\n", "", 1)).unwrap();
    let out = s.agent_cmd(&["run", "--config", s.config_path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("[network.vpn] lacks psk"), "{err}");
    assert_eq!(s.leftovers(), Vec::<String>::new(), "a bad config created something");
    std::fs::write(&s.config_path, good).unwrap();

    s.start_agent();
    let (ni4, ni5, app1) = (s.ni("ni4").to_string(), s.ni("ni5").to_string(), s.app("app1").to_string());
    let error = |ni: &str| supervision(&s, ni).and_then(|v| v.last_error).unwrap_or_default();
    wait_until(scaled(Duration::from_secs(30)), || error(&ni4).contains("rejected the authentication"))
        .unwrap_or_else(|| panic!("NI4 status: {:#?}\n{}", tunnel(&s, &ni4), s.agent_log()));
    wait_until(scaled(Duration::from_secs(30)), || error(&ni5).contains("no answer from 192.168.2.1"))
        .unwrap_or_else(|| panic!("NI5 status: {:#?}\n{}", tunnel(&s, &ni5), s.agent_log()));
    for ni in [&ni4, &ni5] {
        assert!(!is_up(&s, ni));
    }
    // The text output says it too.
    let out = s.agent_cmd(&["status", "--config", s.config_path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("last error: the peer rejected the authentication"), "{text}");

    // The local NI works all along; the agent is still running.
    let seen = s.whoami(&app1, INET_IP, 8080).expect("app1 reaches inet");
    assert!(seen.starts_with("192.168.0.2:"), "{seen}");
    assert!(s.stop_agent().is_some_and(|st| st.success()), "{}", s.agent_log());
    assert!(s.down().status.success());
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

/// `backend = "kernel"` needs ESP in the kernel. Where it is missing (this machine's
/// kernel), the status says so and names the way out; where it is there (the VM run),
/// the tunnel comes up. Which case holds is asked of the kernel directly, by adding an
/// ESP state in a namespace of the test's own.
#[test]
fn the_kernel_backend_says_when_the_kernel_has_no_esp() {
    let config = two_vpns("kernel");
    let mut s = Scenario::with_uplinks(&["ni4", "ni5"], &["app4", "app5"], 3, &config);
    let cloud1 = s.add_cloud(1, "192.168.111.1", &[("data", b"cloud1")]);
    s.strongswan_responder(&cloud1, "192.168.111.1", "cloud1-psk", "192.168.0.0/24", "10.10.10.0/24");
    let probe = s.exec(
        &s.inet,
        &[
            "ip",
            "xfrm",
            "state",
            "add",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "spi",
            "0x100",
            "mode",
            "tunnel",
            "enc",
            "cbc(aes)",
            "0x000102030405060708090a0b0c0d0e0f",
            "auth",
            "hmac(sha1)",
            "0x000102030405060708090a0b0c0d0e0f10111213",
        ],
    );
    let kernel_has_esp = probe.status.success();
    s.start_agent();
    let ni4 = s.ni("ni4").to_string();
    if kernel_has_esp {
        wait_up(&s, &ni4, 30);
    } else {
        let error = || supervision(&s, &ni4).and_then(|v| v.last_error).unwrap_or_default();
        wait_until(scaled(Duration::from_secs(30)), || error().contains("no ESP in this kernel")).unwrap_or_else(|| {
            panic!("probe: {}\nNI4 status: {:#?}\n{}", String::from_utf8_lossy(&probe.stderr), tunnel(&s, &ni4), s.agent_log())
        });
        assert!(error().contains("backend = \"libipsec\""), "{}", error());
        assert!(!is_up(&s, &ni4));
        // Nothing leaves in clear meanwhile: the remote selectors stay unreachable.
        assert_cloud_unreachable(&s, s.app("app4"));
    }
    assert!(s.stop_agent().is_some_and(|st| st.success()), "{}", s.agent_log());
    assert!(s.down().status.success());
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

/// A changed tunnel parameter (here NI4's key) restarts only NI4's charon: NI5's charon
/// and tunnel stay as they are, NI4 itself is not rebuilt (its app port is the same
/// link), and the right key brings NI4's tunnel back.
#[test]
fn changed_tunnel_parameters_restart_only_that_charon() {
    let backend = vpn_backend();
    let config = two_vpns(&backend);
    let mut s = Scenario::with_uplinks(&["ni4", "ni5"], &["app4", "app5"], 3, &config);
    let cloud1 = s.add_cloud(1, "192.168.111.1", &[("data", b"one")]);
    let cloud2 = s.add_cloud(2, "192.168.222.1", &[("data", b"two")]);
    s.strongswan_responder(&cloud1, "192.168.111.1", "cloud1-psk", "192.168.0.0/24", "10.10.10.0/24");
    s.strongswan_responder(&cloud2, "192.168.222.1", "cloud2-psk", "192.168.0.0/24", "10.10.10.0/24");
    s.start_agent();
    let (ni4, ni5) = (s.ni("ni4").to_string(), s.ni("ni5").to_string());
    wait_up(&s, &ni4, 30);
    wait_up(&s, &ni5, 30);
    let pid = |ni: &str| supervision(&s, ni).and_then(|v| v.pid);
    let port_index =
        |s: &Scenario| String::from_utf8_lossy(&s.exec(&ni4, &["cat", "/sys/class/net/nbu1x1/ifindex"]).stdout).trim().to_string();
    let (pid4, pid5, port4) = (pid(&ni4), pid(&ni5), port_index(&s));
    assert!(pid4.is_some() && pid5.is_some());

    let out = s.apply(&config.replacen("psk = \"cloud1-psk\"", "psk = \"not-the-key\"", 1));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let error = |ni: &str| supervision(&s, ni).and_then(|v| v.last_error).unwrap_or_default();
    wait_until(scaled(Duration::from_secs(30)), || error(&ni4).contains("rejected the authentication"))
        .unwrap_or_else(|| panic!("NI4 status: {:#?}\n{}", tunnel(&s, &ni4), s.agent_log()));
    assert_ne!(pid(&ni4), pid4, "NI4's charon was restarted");
    assert_eq!(pid(&ni5), pid5, "NI5's charon was left alone");
    assert!(is_up(&s, &ni5), "NI5's tunnel stayed up: {:#?}", tunnel(&s, &ni5));
    assert_eq!(port_index(&s), port4, "NI4 was not rebuilt");

    let out = s.apply(&config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_up(&s, &ni4, 30);
    assert_eq!(pid(&ni5), pid5);
}
