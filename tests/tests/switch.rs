//! A switch NI (the seed's NI6): the uplink bridged with the app ports, the app leased by
//! the DHCP server behind the uplink, its ACL enforced both ways with a rate limit.

use netns_agent::flows::Verdict;
use netns_tests::{scaled, wait_until, Scenario, UdpCounter, INET_IP};
use std::time::Duration;

const SWITCH: &str = r#"
[[uplink]]
name = "eth3"

[[network]]
name = "@ni6"
kind = "switch"
subnet = "192.168.3.0/24"
gateway = "192.168.3.1"
uplink = "eth3"

[[app]]
name = "app6"
num = 6
netns = "@app6"
[[app.interface]]
network = "@ni6"
ip = "192.168.3.6"
mac = "02:00:00:00:03:06"
acl = [{ id = 1, match = { ip = "192.168.0.0/16" }, action = { limit = { rate = 5, unit = "s", burst = 15 } } }]
"#;

#[test]
fn switch_ni_bridges_the_uplink_under_the_apps_acl() {
    let mut s = Scenario::with_uplinks(&["ni6"], &["app6"], 4, SWITCH);
    let (app6, gw, zedbox) = (s.app("app6").to_string(), s.gw.clone(), s.zedbox.clone());
    // The external DHCP server behind eth3, with a reservation for app6.
    let leases = std::env::temp_dir().join(format!("netns-agent-test-{}-gw.leases", s.id));
    s.spawn(
        &gw,
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=up3",
            "--bind-interfaces",
            "--dhcp-range=192.168.3.100,192.168.3.150,255.255.255.0,1h",
            "--dhcp-host=02:00:00:00:03:06,192.168.3.6",
            "--dhcp-option=option:router,192.168.3.1",
            &format!("--dhcp-leasefile={}", leases.display()),
            "--pid-file",
        ],
    );
    s.start_agent();
    let log = s.agent_log();

    // The uplink is in the NI's bridge; the agent's netns no longer has it.
    let link = s.exec(s.ni("ni6"), &["ip", "-o", "link", "show", "eth3"]);
    assert!(String::from_utf8_lossy(&link.stdout).contains("master br"), "eth3 on the NI bridge:\n{log}");
    assert!(!s.exec(&zedbox, &["ip", "link", "show", "eth3"]).status.success(), "eth3 left zedbox");
    // No DHCP server of ours in a switch NI.
    assert!(!s.state_dir.join(format!("dnsmasq-{}.conf", s.ni("ni6"))).exists());

    // app6 takes the external server's lease (the implicit DHCP rule lets it through).
    let script = std::env::temp_dir().join(format!("netns-agent-test-{}-udhcpc.sh", s.id));
    netns_world::programs::write_udhcpc_script(&script).unwrap();
    let script_arg = script.display().to_string();
    let out = s.exec(&app6, &["busybox", "udhcpc", "-i", "nbu1x6.1", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", &script_arg]);
    let _ = std::fs::remove_file(&script);
    let _ = std::fs::remove_file(&leases);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("lease of 192.168.3.6"), "udhcpc: {text}\n{}", s.agent_log());
    let addr = s.exec(&app6, &["ip", "-o", "addr", "show", "nbu1x6.1"]);
    assert!(String::from_utf8_lossy(&addr.stdout).contains("192.168.3.6/24"));
    // The client's broadcasts pass by the implicit DHCP rule (6), the server's unicast
    // answers by the switch's inbound DHCP rule (10).
    let flows = s.flows();
    assert!(flows.iter().any(|f| f.dport == 67 && f.mark == "0x06000006"), "{flows:?}");
    assert!(flows.iter().any(|f| f.sport == 67 && f.dport == 68 && f.mark == "0x0600000a"), "{flows:?}");

    // From outside: gw (192.168.3.1, in the ACE's 192.168.0.0/16) reaches app6; the
    // internet host does not, and that flow is recorded as dropped.
    s.whoami_server(&app6, "192.168.3.6", 80);
    let peer = s.whoami(&gw, "192.168.3.6", 80);
    assert!(peer.as_deref().is_some_and(|p| p.starts_with("192.168.3.1:")), "gw -> app6 allowed by ACE 1, untranslated: {peer:?}");
    assert_eq!(s.whoami(&s.inet.clone(), "192.168.3.6", 80), None, "inet -> app6 blocked");
    let flows = s.flows();
    assert!(
        flows.iter().any(|f| f.src == INET_IP && f.dst == "192.168.3.6" && f.verdict == Verdict::Drop),
        "dropped inbound flow recorded: {flows:?}"
    );
    // app6 -> anything outside its ACE is blocked and recorded.
    assert_eq!(s.whoami(&app6, INET_IP, 80), None, "app6 -> inet blocked");
    let flows = s.flows();
    assert!(
        flows.iter().any(|f| f.src == "192.168.3.6" && f.dst == INET_IP && f.verdict == Verdict::Drop && f.mark == "0x06bfffff"),
        "dropped outbound flow recorded: {flows:?}"
    );

    // app6 -> 192.168.0.2:8080 (zedbox's eth0, through gw) at 5/s with bursts of 15. Let
    // the bucket refill from the exchanges above first.
    std::thread::sleep(Duration::from_secs(4));
    let counter = UdpCounter::start(&zedbox, "192.168.0.2", 8080);
    let burst = "import socket,time\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nt=time.time()\nfor i in range(40): s.sendto(b'x', ('192.168.0.2', 8080))\nprint(time.time()-t)";
    let out = s.python(&app6, burst, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let took: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let got = counter.count();
    let expected = 15 + (5.0 * took).floor() as u64;
    assert!(got >= 15 && got <= expected + 1, "received {got}, expected 15 + 5/s * {took:.3} s = {expected}");
    let limits = s.flows_report().limits;
    assert!(limits[0].dropped >= 40 - expected - 1, "{limits:?}");
    // Nothing is routed in a switch NI: no fast path.
    for name in netns_tests::fast_path_counters() {
        assert_eq!(s.counter(name), 0, "{name}: switch NIs have no fast path");
    }

    // down gives the uplink back to the agent's netns.
    s.stop_agent();
    assert!(s.down().status.success());
    wait_until(scaled(Duration::from_secs(5)), || s.exec(&zedbox, &["ip", "link", "show", "eth3"]).status.success())
        .expect("eth3 is back in zedbox after down");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}
