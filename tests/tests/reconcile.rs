//! The reconciling agent: a restart over an applied system disturbs nothing, a changed
//! config is applied live and touches only what changed, a bad config changes nothing,
//! random config sequences converge to what a fresh apply builds, and `down` after
//! `kill -9` leaves nothing. Real namespaces, real clients (iperf3, python sockets).

use std::{
    collections::BTreeSet,
    path::Path,
    process::Command,
    thread::sleep,
    time::{Duration, Instant, SystemTime},
};

use netns_agent::state::AppliedState;
use netns_ebpf_common::{
    map_names,
    nat::{NAT_FLAG_ORIG, REWRITE_DST},
};
use netns_tests::{py_script, scaled, wait_until, EchoResult, Scenario, INET_IP};
use serde_json::Value;

/// NI1 (app1, app2) and NI2 (app3, the same subnet) on eth0. app1 may reach the internet
/// host's ports 5201 (iperf3), 7000 (whoami) and 7001 (echo); app3 exposes its port 80
/// as 8080.
const BASE: &str = r#"
[[uplink]]
name = "eth0"
dns = ["10.99.0.10"]

[[network]]
name = "@ni1"
kind = "local"
index = 1
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
uplink = "eth0"

[[network]]
name = "@ni2"
kind = "local"
index = 2
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
uplink = "eth0"

[[app]]
name = "app1"
num = 1
netns = "@app1"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.2"
acl = [
  { id = 1, match = { ip = "10.99.0.10/32", protocol = "tcp", fport = 5201 } },
  { id = 2, match = { ip = "10.99.0.10/32", protocol = "tcp", fport = 7000 } },
  { id = 3, match = { ip = "10.99.0.10/32", protocol = "tcp", fport = 7001 } },
]

[[app]]
name = "app2"
num = 2
netns = "@app2"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.3"
acl = [{ id = 1, match = { ip = "10.99.0.0/16" } }]

[[app]]
name = "app3"
num = 3
netns = "@app3"
[[app.interface]]
network = "@ni2"
ip = "10.10.1.2"
acl = [
  { id = 1, match = { ip = "10.99.0.0/16" } },
  { id = 2, match = { protocol = "tcp", lport = 8080 }, action = { portmap = 80 } },
]
"#;

fn base() -> Scenario {
    let mut s = Scenario::with_uplinks(&["ni1", "ni2", "ni3"], &["app1", "app2", "app3", "app4"], 1, BASE);
    s.whoami_server(&s.inet.clone(), INET_IP, 7000);
    s.echo_server(&s.inet.clone(), INET_IP, 7001);
    s.echo_server(&s.inet.clone(), INET_IP, 7002);
    s.start_agent();
    s
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// kill -9 the agent five times under load and start it again each time: the long
/// iperf3 stream, a new connection every 100 ms through both NATs and DNS queries every
/// 100 ms. Nothing breaks, nothing is refused, DNS answers again after each restart.
#[test]
fn restart_under_load_disturbs_no_flow() {
    let mut s = base();
    let (app1, inet) = (s.app("app1").to_string(), s.inet.clone());
    s.spawn(&inet, &["iperf3", "-s", "-B", INET_IP]);
    wait_until(scaled(Duration::from_secs(10)), || {
        !String::from_utf8_lossy(&s.exec(&inet, &["ss", "-Hltn", "sport = :5201"]).stdout).trim().is_empty()
    })
    .expect("iperf3 server");
    // Five here; two in the emulated VM, where each restart takes ~10x as long (the
    // guest's time limit holds the whole suite).
    let restarts = if scaled(Duration::from_secs(1)) > Duration::from_secs(1) { 2 } else { 5 };
    // Each round: traffic with the agent up, kill -9, start again (its apply: under 2 s
    // here, longer in the emulated VM), traffic; the stream outlasts them all.
    // (Each restart loads the NIs' programs: a few seconds with a busy verifier.)
    let duration = scaled(Duration::from_secs(7)).as_secs_f64() * restarts as f64 + 3.0;
    let secs = format!("{}", duration.ceil() as u64);
    let stop = s.state_dir.with_extension("stop");
    let _ = std::fs::remove_file(&stop);
    let stop_arg = stop.display().to_string();
    let stream = s.background(&app1, &["iperf3", "-c", INET_IP, "-t", &secs, "-b", "50M", "-J"]);
    let loop_ =
        s.background(&app1, &["python3", &py_script("traffic_loop.py"), INET_IP, "7000", &secs, "0.1", "10.10.1.1", "app2", &stop_arg]);
    let before = port_programs(&s, "ni1", "nbu1x1");
    assert_eq!(before.len(), 2, "one filter each way on the port: {before:?}");
    let mut launched = Vec::new();
    for _ in 0..restarts {
        sleep(scaled(Duration::from_secs(1)));
        s.kill_agent();
        sleep(Duration::from_millis(300));
        launched.push(now());
        s.start_agent();
        sleep(scaled(Duration::from_secs(1)));
    }
    // DNS's first answer after the last launch comes within the loop.
    sleep(scaled(Duration::from_secs(2)));
    std::fs::write(&stop, "").unwrap();
    let traffic = json_of(&loop_.finish());
    let iperf = stream.finish();
    let report: Value = serde_json::from_slice(&iperf.stdout).unwrap_or(Value::Null);
    assert!(iperf.status.success() && report["error"].is_null(), "the iperf3 stream broke: {}\n{}", report["error"], s.agent_log());
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    let failed = traffic["failed"].as_array().unwrap();
    println!(
        "{restarts} restarts: iperf3 sent {} MB without a break; {} new connections, {} failed",
        sent / 1_000_000,
        traffic["ok"],
        failed.len()
    );
    assert!(failed.is_empty(), "new connections failed across restarts: {failed:?}");
    assert!(traffic["ok"].as_u64().unwrap() > 20 * restarts as u64);
    // DNS: after each launch, the first answer; it must come.
    let dns: Vec<(f64, bool)> =
        traffic["dns"].as_array().unwrap().iter().map(|d| (d[0].as_f64().unwrap(), d[1].as_bool().unwrap())).collect();
    for t in &launched {
        let first = dns.iter().find(|(at, ok)| at > t && *ok).map(|(at, _)| at - t);
        let first = first.unwrap_or_else(|| panic!("DNS never answered after the restart at {t}:\n{}", s.agent_log()));
        println!("restart: DNS answered {:.0} ms after `run` started", first * 1000.0);
    }
    assert!(dns.last().is_some_and(|d| d.1), "DNS answers at the end");
    // Each start put its own programs into the port's filters, in place: still one
    // filter each way, with programs other than the first agent's.
    let after = port_programs(&s, "ni1", "nbu1x1");
    assert_eq!(after.len(), 2, "one filter each way on the port after the restarts: {after:?}");
    assert!(after.iter().all(|p| !before.contains(p)), "the programs were replaced: {before:?} -> {after:?}");
}

/// app1's ACL made 10,000 ACEs (9,996 drop ACEs ahead of the ones that allow its
/// traffic), then replaced whole, again and again, while a UDP stream that its late ACE
/// allows runs: each swap is one update of the port's entry, and not one packet of the
/// stream is lost or dropped.
/// An agent whose ACL maps are at a new version finds the ports' entries naming ACLs it
/// does not have (the last agent wrote them into the maps of the version before): it
/// writes every ACL anew under ids above theirs (an id of theirs reused would be taken
/// for theirs and removed with them), and the ports judge as before. The ACL maps' pins
/// removed while the agent is down stand for the other version's.
#[test]
fn an_agent_with_acl_maps_of_a_new_version_writes_every_acl_anew() {
    let mut s = base();
    let app1 = s.app("app1").to_string();
    let acl_ids = |s: &Scenario| -> Vec<u64> {
        bpftool_dump(s, map_names::IFACES).iter().map(|e| e["value"]["acl_id"].as_u64().expect("acl_id")).collect()
    };
    let before = acl_ids(&s);
    assert_eq!(before.len(), 3, "three ports: {before:?}");
    let judged = |s: &Scenario| {
        let allowed = s.echo(&app1, INET_IP, 7001, 10, None);
        assert!(matches!(allowed, EchoResult::Echoed(10)), "app1's ACL allows port 7001: {allowed:?}\n{}", s.agent_log());
        let other = s.echo(&app1, INET_IP, 7002, 10, None);
        assert!(matches!(other, EchoResult::TimedOut), "app1's ACL has no ACE for port 7002: {other:?}");
        let app2 = s.echo(s.app("app2"), INET_IP, 7002, 10, None);
        assert!(matches!(app2, EchoResult::Echoed(10)), "app2's ACL allows 10.99.0.0/16: {app2:?}");
    };
    judged(&s);

    s.kill_agent();
    for map in
        [map_names::ACL_SHAPES, map_names::ACL_RANGES, map_names::ACL_PROTO, map_names::ACES, map_names::ACL_HOSTS, map_names::ACL_SUMMARY]
    {
        std::fs::remove_file(s.pin_dir.join(map)).unwrap_or_else(|e| panic!("unpinning {map}: {e}"));
    }
    s.start_agent();

    let after = acl_ids(&s);
    let highest_before = before.iter().max().unwrap();
    assert!(after.iter().all(|id| id > highest_before), "every ACL written anew above the old ids: {before:?} -> {after:?}");
    let shapes = bpftool_dump(&s, map_names::ACL_SHAPES);
    assert_eq!(shapes.len(), 3, "one ACL per port, nothing else: {shapes:?}");
    judged(&s);
}

/// An agent whose programs bring a map the running data path has no pin of (a new
/// version's, here STATS's pin removed while the agent is down) takes a config that
/// removes an app and moves a port map on its first apply: the removals find the maps
/// (the programs, which pin the new map, are loaded before anything is removed), so
/// app2's port and map entries go and the port map moves, with no error. (Loaded only
/// when a port was made, the programs came after the removals: the maps could not be
/// opened, app2's removal failed and left its veth.)
#[test]
fn an_agent_with_a_new_map_removes_what_leaves_on_its_first_apply() {
    let mut s = base();
    let (app2, app3) = (s.app("app2").to_string(), s.app("app3").to_string());
    s.whoami_server(&app3, "10.10.1.2", 80);
    let gw = s.gw.clone();
    assert!(s.whoami(&gw, "192.168.0.2", 8080).is_some(), "the port map works before the change");
    assert_eq!(bpftool_dump(&s, map_names::IFACES).len(), 3, "three ports");

    s.kill_agent();
    std::fs::remove_file(s.pin_dir.join(map_names::STATS)).expect("unpinning STATS");
    let changed = BASE
        .replace(
            "[[app]]\nname = \"app2\"\nnum = 2\nnetns = \"@app2\"\n[[app.interface]]\nnetwork = \"@ni1\"\nip = \"10.10.1.3\"\nacl = [{ id = 1, match = { ip = \"10.99.0.0/16\" } }]\n",
            "",
        )
        .replace("lport = 8080 }, action = { portmap = 80 }", "lport = 8081 }, action = { portmap = 80 }");
    assert!(!changed.contains("app2") && changed.contains("8081"));
    s.write_config(&changed);
    s.start_agent();

    let report = s.status().last_apply.expect("the start's apply is on record");
    assert!(report.errors.is_empty(), "the first apply's errors: {:?}\n{}", report.errors, s.agent_log());
    assert!(s.pin_dir.join(map_names::STATS).exists(), "STATS pinned anew");
    assert_eq!(bpftool_dump(&s, map_names::IFACES).len(), 2, "app2's port entry removed");
    let links = String::from_utf8_lossy(&s.exec(&app2, &["ip", "-o", "link", "show"]).stdout).into_owned();
    assert!(links.lines().all(|l| l.contains(": lo:")), "app2's interface removed: {links}");
    assert!(s.whoami(&gw, "192.168.0.2", 8081).is_some(), "the moved port map works\n{}", s.agent_log());
    assert!(s.whoami(&gw, "192.168.0.2", 8080).is_none(), "the old port map is gone");
}

/// A config with no NI left, applied to the running agent, removes the shared maps'
/// pins too (as `down` does); the NIs applied again after it work. (The agent kept the
/// programs it had loaded, whose maps were no longer pinned: the NIs applied after
/// could not open them and failed.)
#[test]
fn every_ni_removed_then_applied_again_works() {
    let s = base();
    let app1 = s.app("app1").to_string();
    assert!(s.whoami(&app1, INET_IP, 7000).is_some(), "app1 reaches the internet host");
    let uplink_only = &BASE[..BASE.find("[[network]]").expect("BASE has networks")];
    let out = s.apply(uplink_only);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), s.agent_log());
    let pins = s.pins();
    assert!(pins.is_empty(), "no pin left with no NI: {pins:?}");
    let out = s.apply(BASE);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), s.agent_log());
    let report = s.status().last_apply.expect("the apply is on record");
    assert!(report.errors.is_empty(), "the apply's errors: {:?}\n{}", report.errors, s.agent_log());
    assert!(s.whoami(&app1, INET_IP, 7000).is_some(), "app1 reaches the internet host again\n{}", s.agent_log());
}

#[test]
fn acl_swaps_under_traffic_drop_no_packet() {
    let mut s = base();
    let (app1, inet) = (s.app("app1").to_string(), s.inet.clone());
    let old_acl = "acl = [\n  { id = 1, match = { ip = \"10.99.0.10/32\", protocol = \"tcp\", fport = 5201 } },";
    assert!(BASE.contains(old_acl));
    let config = |filler_port: u32| {
        let fillers: Vec<String> = (0..9996)
            .map(|i| {
                let port = filler_port + i;
                format!(
                    "  {{ id = {}, match = {{ ip = \"10.99.0.10/32\", protocol = \"udp\", fport = {port} }}, action = \"drop\" }},",
                    100 + i
                )
            })
            .collect();
        let udp = "  { id = 4, match = { ip = \"10.99.0.10/32\", protocol = \"udp\", fport = 5201 } },";
        BASE.replace(
            old_acl,
            &format!(
                "acl = [\n{}\n{udp}\n  {{ id = 1, match = {{ ip = \"10.99.0.10/32\", protocol = \"tcp\", fport = 5201 }} }},",
                fillers.join("\n")
            ),
        )
    };
    let applied = |out: std::process::Output| {
        assert!(out.status.success(), "apply: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    applied(s.apply(&config(20_000)));
    s.spawn(&inet, &["iperf3", "-s", "-B", INET_IP]);
    wait_until(scaled(Duration::from_secs(10)), || {
        !String::from_utf8_lossy(&s.exec(&inet, &["ss", "-Hltn", "sport = :5201"]).stdout).trim().is_empty()
    })
    .expect("iperf3 server");
    let swaps = 4;
    let secs = (scaled(Duration::from_secs(3)).as_secs() * swaps + 4).to_string();
    let drops = |s: &Scenario| -> Vec<(String, u64)> {
        // (Not drop_non_ipv4: the apps' own IPv6 neighbour discovery, which no ACL lets out.)
        s.flows_report().counters.into_iter().filter(|(name, n)| name.starts_with("drop") && name != "drop_non_ipv4" && *n > 0).collect()
    };
    let drops_before = drops(&s);
    let stream = s.background(&app1, &["iperf3", "-c", INET_IP, "-u", "-b", "5M", "-t", &secs, "-J"]);
    sleep(Duration::from_secs(1));
    for round in 0..swaps {
        let started = Instant::now();
        applied(s.apply(&config(30_000 + 10_000 * (round as u32 % 2))));
        println!("swap {round}: 10,000 ACEs applied in {} ms (wall, debug agent)", started.elapsed().as_millis());
        sleep(scaled(Duration::from_secs(2)));
    }
    let out = stream.finish();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(out.status.success() && report["error"].is_null(), "the stream broke: {}\n{}", report["error"], s.agent_log());
    let sum = &report["end"]["sum"];
    let (packets, lost) = (sum["packets"].as_u64().unwrap_or(0), sum["lost_packets"].as_u64().unwrap_or(u64::MAX));
    println!("{swaps} swaps of 10,000 ACEs under a 5 Mbit/s UDP stream: {packets} packets, {lost} lost");
    assert!(packets > 1000, "the stream ran: {sum}");
    assert_eq!(lost, 0, "packets lost across the swaps: {sum}");
    assert_eq!(drops(&s), drops_before, "the data path dropped packets across the swaps");
    let last = s.agent_log().lines().rfind(|l| l.contains("applied")).unwrap_or_default().to_string();
    println!("agent: {last}");
}

/// The gateway's MAC is the agent's (02:16:3e:<NI index>:00:00), not the kernel's pick
/// among the bridge's ports (the lowest of theirs): a port with a lower MAC, or the
/// removal of the port whose MAC it was, leaves it where the apps' ARP caches have it;
/// before, app1's queries to its gateway went to a MAC no longer the bridge's until its
/// ARP entry expired (CI saw its DNS fail). A bridge an earlier agent left with the
/// kernel's pick gets the agent's MAC, and the apps hear of it by a gratuitous ARP.
#[test]
fn the_gateways_mac_stays_put_as_apps_come_and_go() {
    let mut s = base();
    let (app1, ni1) = (s.app("app1").to_string(), s.ni("ni1").to_string());
    let bridge_mac = "02:16:3e:01:00:00";
    let asks_its_gateway = |s: &Scenario, when: &str| {
        let answer = s.dns_a(&app1, "10.10.1.1", "app1");
        assert_eq!(answer, Some(vec!["10.10.1.2".to_string()]), "app1's DNS query to its gateway {when}\n{}", s.agent_log());
    };
    assert_eq!(s.link_mac(&ni1, "br"), bridge_mac, "the bridge has the agent's MAC");
    asks_its_gateway(&s, "at the start");
    assert_eq!(s.neighbour_mac(&app1, "10.10.1.1").unwrap_or_default(), bridge_mac);

    // app2's port takes the lowest MAC there is, then app2 goes.
    assert!(s.exec(&ni1, &["ip", "link", "set", "nbu1x2", "address", "02:00:00:00:00:01"]).status.success());
    assert_eq!(s.link_mac(&ni1, "br"), bridge_mac, "a port with a lower MAC leaves the bridge's");
    asks_its_gateway(&s, "after a port took a lower MAC");
    let without_app2 = BASE.replace(
        "[[app]]\nname = \"app2\"\nnum = 2\nnetns = \"@app2\"\n[[app.interface]]\nnetwork = \"@ni1\"\nip = \"10.10.1.3\"\nacl = [{ id = 1, match = { ip = \"10.99.0.0/16\" } }]\n",
        "",
    );
    assert_ne!(without_app2, BASE);
    let out = s.apply(&without_app2);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.link_mac(&ni1, "br"), bridge_mac, "removing that port leaves the bridge's MAC");
    asks_its_gateway(&s, "after app2 was removed");
    assert_eq!(s.neighbour_mac(&app1, "10.10.1.1").unwrap_or_default(), bridge_mac);

    // An earlier agent's bridge, with a MAC the kernel chose; app1 knows that one.
    s.kill_agent();
    let earlier = "02:00:00:00:00:02";
    let out = s.exec(&ni1, &["ip", "link", "set", "dev", "br", "address", earlier]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.exec(&app1, &["ip", "neigh", "flush", "to", "10.10.1.1"]).status.success());
    // (Any packet to the gateway has app1 ask for its MAC; no answer is needed.)
    s.exec(&app1, &["ping", "-c1", "-W1", "10.10.1.1"]);
    assert_eq!(s.neighbour_mac(&app1, "10.10.1.1").unwrap_or_default(), earlier);
    s.start_agent();
    assert_eq!(s.link_mac(&ni1, "br"), bridge_mac, "the agent set the bridge's MAC\n{}", s.agent_log());
    wait_until(scaled(Duration::from_secs(3)), || s.neighbour_mac(&app1, "10.10.1.1").unwrap_or_default() == bridge_mac).unwrap_or_else(
        || {
            let neigh = String::from_utf8_lossy(&s.exec(&app1, &["ip", "neigh"]).stdout).into_owned();
            panic!("app1 heard of the new MAC: its neighbours: {neigh}\n{}", s.agent_log())
        },
    );
    asks_its_gateway(&s, "after the agent set the bridge's MAC");
}

/// Add an app, remove an app, change one ACE, change a port map, add and remove an NI
/// (one of them by SIGHUP), all while other apps' traffic runs: that traffic sees no
/// error, and each change does what it says.
#[test]
fn live_edits_touch_only_what_changed() {
    let mut s = base();
    let (app1, app2, app3, app4) =
        (s.app("app1").to_string(), s.app("app2").to_string(), s.app("app3").to_string(), s.app("app4").to_string());
    s.whoami_server(&app3, "10.10.1.2", 80);
    // Upper bound; the bystanders stop when the test touches `stop`.
    let secs = scaled(Duration::from_secs(60)).as_secs().to_string();
    let stop = s.state_dir.with_extension("stop");
    let _ = std::fs::remove_file(&stop);
    let stop_arg = stop.display().to_string();
    // Bystanders: app3's long session and app1's new connections every 100 ms.
    let session = s.background(&app3, &["python3", &py_script("echo_session.py"), INET_IP, "7002", &secs, "0.1", &stop_arg]);
    let loop_ =
        s.background(&app1, &["python3", &py_script("traffic_loop.py"), INET_IP, "7000", &secs, "0.1", "10.10.1.1", "app1", &stop_arg]);
    // app1's session on port 7001, whose ACE the edit below removes, and on port 5201,
    // whose ACE (the first) the edit keeps.
    let mut doomed = s.background(&app1, &["python3", &py_script("echo_session.py"), INET_IP, "7001", &secs, "0.1", &stop_arg]);
    s.echo_server(&s.inet.clone(), INET_IP, 5201);
    let kept = s.background(&app1, &["python3", &py_script("echo_session.py"), INET_IP, "5201", &secs, "0.1", &stop_arg]);
    sleep(Duration::from_secs(1));
    // When each edit ran (seconds since the epoch, as the bystanders' failures are
    // stamped): a bystander's failure is matched to the edit it met.
    let edits = std::cell::RefCell::new(Vec::<(String, f64, f64)>::new());
    let now = || SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let apply = |s: &Scenario, config: &str, what: &str| {
        let started = now();
        let out = s.apply(config);
        edits.borrow_mut().push((what.to_string(), started, now()));
        assert!(out.status.success(), "{what}: {}\n{}", String::from_utf8_lossy(&out.stderr), s.agent_log());
        println!("{what}: {}", String::from_utf8_lossy(&out.stdout).trim().replace('\n', "; "));
    };

    // 1. Add app4 on NI1.
    let with_app4 = format!(
        "{BASE}\n[[app]]\nname = \"app4\"\nnum = 4\nnetns = \"@app4\"\n[[app.interface]]\nnetwork = \"@ni1\"\nip = \"10.10.1.4\"\nacl = [{{ id = 1, match = {{ ip = \"10.99.0.0/16\" }} }}]\n"
    );
    apply(&s, &with_app4, "add app4");
    assert!(s.whoami(&app4, INET_IP, 7000).is_some(), "app4 reaches the internet host");

    // 2. Remove app2: its link, map entries, lease, flows go.
    assert!(s.whoami(&app2, INET_IP, 7000).is_some());
    let without_app2 = with_app4.replace(
        "[[app]]\nname = \"app2\"\nnum = 2\nnetns = \"@app2\"\n[[app.interface]]\nnetwork = \"@ni1\"\nip = \"10.10.1.3\"\nacl = [{ id = 1, match = { ip = \"10.99.0.0/16\" } }]\n",
        "",
    );
    assert_ne!(without_app2, with_app4);
    apply(&s, &without_app2, "remove app2");
    let links = String::from_utf8_lossy(&s.exec(&app2, &["ip", "-o", "link"]).stdout).into_owned();
    assert!(!links.contains("nbu1x2"), "app2's link is gone: {links}");
    assert!(!s.flows().iter().any(|f| f.src == "10.10.1.3" || f.dst == "10.10.1.3"), "app2's flows are gone");
    let leases = std::fs::read_to_string(s.state_dir.join(format!("dnsmasq-{}.conf", s.ni("ni1")))).unwrap();
    assert!(!leases.contains("10.10.1.3"), "app2's static lease is gone: {leases}");
    let ifaces = bpftool_dump(&s, "IFACE_V3");
    assert!(!ifaces.iter().any(|e| e["value"]["app_num"] == 2), "app2's port config is gone: {ifaces:?}");

    // 3. Change one ACE of app1 (7001 no longer allowed): its 7001 session stops, its
    //    other flows go on; those the first two ACEs (kept) or a rule decided are not
    //    judged again.
    assert!(doomed.running(), "app1's 7001 session ended before its ACE changed: {}", json_of(&doomed.finish()));
    let rejudged_before = s.counter("rejudged");
    let skipped_before = s.counter("rejudge_skipped");
    let narrower = without_app2.replace("{ id = 3, match = { ip = \"10.99.0.10/32\", protocol = \"tcp\", fport = 7001 } },\n", "");
    assert_ne!(narrower, without_app2);
    apply(&s, &narrower, "remove app1's ACE 3");
    let cut = doomed.finish();
    let cut = json_of(&cut);
    assert!(cut["error"].is_string(), "app1's session on 7001 must stop: {cut}");
    let rejudged = s.counter("rejudged");
    println!("app1 session on 7001 after the change: {cut}; rejudged {rejudged_before} -> {rejudged}");
    assert!(rejudged > rejudged_before, "live flows were judged again: {:#?}\n{}", s.flows_report().counters, s.agent_log());
    wait_until(scaled(Duration::from_secs(5)), || s.counter("rejudge_skipped") > skipped_before)
        .unwrap_or_else(|| panic!("the 5201 session (first ACE, kept) was judged again: {:#?}", s.flows_report().counters));
    assert!(matches!(s.echo(&app1, INET_IP, 7001, 10, None), EchoResult::TimedOut), "new flows to 7001 are refused");

    // 4. Change app3's port map (8080 -> 8081): the old mapping and its flows go.
    let gw = s.gw.clone();
    assert!(s.whoami(&gw, "192.168.0.2", 8080).is_some(), "the port map works before the change");
    let remapped = narrower.replace("lport = 8080", "lport = 8081");
    apply(&s, &remapped, "move app3's port map to 8081");
    assert!(s.whoami(&gw, "192.168.0.2", 8081).is_some(), "the new port map works");
    assert!(s.whoami(&gw, "192.168.0.2", 8080).is_none(), "the old port map is gone");

    // 5. Add NI3 (by SIGHUP), then remove it.
    let with_ni3 = format!(
        "{remapped}\n[[network]]\nname = \"@ni3\"\nkind = \"local\"\nindex = 3\nsubnet = \"10.30.0.0/24\"\ngateway = \"10.30.0.1\"\nuplink = \"eth0\"\n"
    );
    s.write_config(&with_ni3);
    let applies = |s: &Scenario| -> u64 { AppliedState::try_read(&s.state_dir).unwrap().expect("the agent's record").applies };
    let before = applies(&s);
    let started = now();
    Command::new("kill").args(["-HUP", &s.agent_pid().unwrap().to_string()]).status().unwrap();
    wait_until(scaled(Duration::from_secs(10)), || applies(&s) > before).expect("SIGHUP applied");
    edits.borrow_mut().push(("add NI3 (SIGHUP)".to_string(), started, now()));
    assert!(Path::new("/run/netns").join(s.ni("ni3")).exists(), "NI3 exists");
    apply(&s, &remapped, "remove NI3");
    assert!(!Path::new("/run/netns").join(s.ni("ni3")).exists(), "NI3 is gone");

    std::fs::write(&stop, "").unwrap();
    let session = json_of(&session.finish());
    let kept = json_of(&kept.finish());
    assert!(kept["error"].is_null() && kept["sent"] == kept["echoed"], "app1's session on 5201 (kept ACE) saw an error: {kept}");
    let traffic = json_of(&loop_.finish());
    let _ = std::fs::remove_file(&stop);
    println!("bystanders: app3's session {session}; app1's connections ok {} failed {:?}", traffic["ok"], traffic["failed"]);
    assert!(session["error"].is_null() && session["sent"] == session["echoed"], "app3's session saw an error: {session}");
    let edits = edits.into_inner();
    // The edits that ran while something that started at `t` and lasted up to `secs` did.
    let met = |t: f64, secs: u64| -> Vec<&str> {
        let span = scaled(Duration::from_secs(secs)).as_secs_f64();
        edits.iter().filter(|(_, a, b)| t <= *b && t + span >= *a).map(|e| e.0.as_str()).collect()
    };
    let failed = traffic["failed"].as_array().unwrap();
    assert!(
        failed.is_empty(),
        "app1's new connections saw errors: {}\nthe edits (start, end): {edits:?}\n{}",
        failed
            .iter()
            .map(|f| {
                let t = f[0].as_f64().unwrap_or(0.0);
                format!("[{t:.2}: {} (edits while it ran: {:?})]", f[1], met(t, 3))
            })
            .collect::<Vec<_>>()
            .join(" "),
        s.agent_log()
    );
    // A query is stamped when it ended (answered or timed out after 0.2 s, scaled): what
    // the proxy logged for app1 around it says whether the query reached it.
    let dns_failed: Vec<f64> =
        traffic["dns"].as_array().unwrap().iter().filter(|d| d[1] == false).map(|d| d[0].as_f64().unwrap_or(0.0)).collect();
    let proxy_log = s.dns_log();
    assert!(
        dns_failed.is_empty(),
        "app1's DNS queries saw errors: {}\nthe edits (start, end): {edits:?}\n{}",
        dns_failed
            .iter()
            .map(|&t| {
                let asked = t - scaled(Duration::from_millis(200)).as_secs_f64();
                let logged: Vec<String> = proxy_log
                    .iter()
                    .filter(|e| e.app == "app1" && (e.time - asked).abs() < 1.0)
                    .map(|e| format!("{:.3} {} {:?} {}", e.time, e.name, e.rcode, e.source))
                    .collect();
                format!("[{asked:.3}..{t:.3} (edits while it ran: {:?}; the proxy's log for app1 within 1 s: {logged:?})]", met(asked, 1))
            })
            .collect::<Vec<_>>()
            .join(" "),
        s.agent_log()
    );
}

/// Removing an app takes its flows' translations in the agent's netns with it, and no
/// other flow's: app1 and app2 (NI1) are each given the one source port there is, at the
/// NI veth and at the uplink, for flows to two ports of the internet host. Once app2 is
/// removed, app1's server speaks again: its packet still finds app1's translation at the
/// uplink. (Picked by the NI veth's port alone, app2's translations at the uplink were
/// app1's too: they went with app2, and the server's line never reached app1.)
#[test]
fn removing_an_app_leaves_the_translations_of_flows_given_the_same_port() {
    let one_port = format!("nat_port_range = [62000, 62000]\n{BASE}");
    let mut s = Scenario::with_uplinks(&["ni1", "ni2", "ni3"], &["app1", "app2", "app3", "app4"], 1, &one_port);
    s.start_agent();
    let (app1, app2) = (s.app("app1").to_string(), s.app("app2").to_string());
    // app1's ACE 3 lets it reach port 7001; app2's ACL the whole /16.
    let kept = s.push_session(&app1, 7001);
    let gone = s.push_session(&app2, 7002);
    let translated = |s: &Scenario| -> Vec<(String, u16)> {
        bpftool_dump(s, "NAT_V2")
            .iter()
            .filter(|e| e["value"]["rewrite"] == 1 && e["value"]["port"] == 62000)
            .map(|e| (e["key"]["src"].to_string(), e["key"]["dport"].as_u64().unwrap_or(0) as u16))
            .collect()
    };
    let both = wait_until(scaled(Duration::from_secs(5)), || translated(&s).len() >= 4);
    assert!(both.is_some(), "both flows given port 62000 at the NI veth and at the uplink: {:?}", translated(&s));
    let without_app2 = BASE.replace(
        "[[app]]\nname = \"app2\"\nnum = 2\nnetns = \"@app2\"\n[[app.interface]]\nnetwork = \"@ni1\"\nip = \"10.10.1.3\"\nacl = [{ id = 1, match = { ip = \"10.99.0.0/16\" } }]\n",
        "",
    );
    assert_ne!(without_app2, BASE);
    let out = s.apply(&format!("nat_port_range = [62000, 62000]\n{without_app2}"));
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), s.agent_log());
    println!("after app2's removal, translated with port 62000: {:?}", translated(&s));
    drop(gone);
    kept.assert_survived("app1's flow, its server speaking after app2's removal");
}

/// A changed port map takes the flows it translated with it, and no other: app3's own
/// flow out to the internet host was given the port map's port (8080, the one source
/// port there is) at the NI veth and at the uplink; once the port map moves to 8081, the
/// translations of the port map's flow are gone and the server still reaches app3.
/// (Picked by port alone, that flow's translations went with the port map's.)
#[test]
fn a_changed_port_map_leaves_flows_that_were_given_its_port() {
    let one_port = format!("nat_port_range = [8080, 8080]\n{BASE}");
    let mut s = Scenario::with_uplinks(&["ni1", "ni2", "ni3"], &["app1", "app2", "app3", "app4"], 1, &one_port);
    s.start_agent();
    let app3 = s.app("app3").to_string();
    s.whoami_server(&app3, "10.10.1.2", 80);
    s.whoami_server(&app3, "10.10.1.2", 81);
    let gw = s.gw.clone();
    assert!(s.whoami(&gw, "192.168.0.2", 8080).is_some(), "the port map works before the change");
    let kept = s.push_session(&app3, 7002);
    let given_8080 = wait_until(scaled(Duration::from_secs(5)), || {
        bpftool_dump(&s, "NAT_V2")
            .iter()
            .filter(|e| e["value"]["rewrite"] == 1 && e["key"]["dport"] == 7002 && e["value"]["port"] == 8080)
            .count()
            == 2
    });
    assert!(given_8080.is_some(), "app3's flow given port 8080 at the NI veth and at the uplink: {:?}", bpftool_dump(&s, "NAT_V2"));
    // The port map's own translations (destination NAT, first half), at the uplink and
    // at the NI veth: the whoami's flow made them.
    let mapped = |s: &Scenario| {
        let orig = |e: &Value| e["value"]["flags"].as_u64().unwrap_or(0) & u64::from(NAT_FLAG_ORIG) != 0;
        bpftool_dump(s, "NAT_V2")
            .into_iter()
            .filter(|e| e["value"]["rewrite"] == REWRITE_DST && e["key"]["dport"] == 8080 && orig(e))
            .count()
    };
    assert_eq!(mapped(&s), 2, "the port map's flow translated at the uplink and at the NI veth: {:?}", bpftool_dump(&s, "NAT_V2"));
    // To app3's port 81 now: with one port, its flows come from the same agent-side
    // address and port, and the whoami's closed connection to port 80 waits out its
    // TIME_WAIT in app3.
    let out = s.apply(&one_port.replace("lport = 8080 }, action = { portmap = 80 }", "lport = 8081 }, action = { portmap = 81 }"));
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), s.agent_log());
    assert_eq!(mapped(&s), 0, "the moved port map's flow was flushed: {:?}", bpftool_dump(&s, "NAT_V2"));
    assert!(s.whoami(&gw, "192.168.0.2", 8081).is_some(), "the moved port map works");
    kept.assert_survived("app3's own flow, given port 8080, after its port map moved");
}

/// One copy of the programs serves every NI: the app ports of NI1 and NI2 run the same
/// programs (by id), each port has the ifindex the plan chose for it, and IFZONE_V1 gives
/// each the zone of its NI; traffic flows in both NIs.
#[test]
fn one_copy_of_the_programs_serves_every_ni() {
    let s = base();
    let (app1, app3) = (s.app("app1").to_string(), s.app("app3").to_string());
    assert!(s.whoami(&app1, INET_IP, 7000).is_some(), "app1 (NI1) reaches the internet host");
    assert!(s.whoami(&app3, INET_IP, 7000).is_some(), "app3 (NI2) reaches the internet host");
    let mut from_app_ids = BTreeSet::new();
    let zones: std::collections::HashMap<u64, u64> =
        bpftool_dump(&s, "IFZONE_V1").iter().map(|e| (e["key"].as_u64().unwrap_or(0), e["value"].as_u64().unwrap_or(0))).collect();
    for (ni, zone, port, slot) in [("ni1", 1u64, "nbu1x1", 0x101u64), ("ni1", 1, "nbu1x2", 0x102), ("ni2", 2, "nbu1x3", 0x103)] {
        let link: Value = serde_json::from_slice(&s.exec(s.ni(ni), &["ip", "-j", "link", "show", port]).stdout).unwrap();
        let ifindex = link[0]["ifindex"].as_u64().unwrap_or(0);
        assert_eq!(ifindex, 0x4000_0000 | zone << 16 | slot, "{port} in {ni} has the planned ifindex");
        assert_eq!(zones.get(&ifindex), Some(&zone), "IFZONE_V1 gives {port} the zone of {ni}: {zones:?}");
        let id = from_app_prog_id(&s, ni, port);
        assert!(id.is_some(), "{port} in {ni} runs a from-app program");
        from_app_ids.insert(id);
    }
    assert_eq!(from_app_ids.len(), 1, "every port runs the same from-app program: {from_app_ids:?}");
}

/// The id of the from-app program on `port` of NI `ni`: its tc filter's.
fn from_app_prog_id(s: &Scenario, ni: &str, port: &str) -> Option<u64> {
    port_programs(s, ni, port).into_iter().find(|(name, _)| name == "app_port_from_app").map(|(_, id)| id)
}

/// Every program attached to `port` of NI `ni` (bpftool's `net` list), by name and id.
fn port_programs(s: &Scenario, ni: &str, port: &str) -> Vec<(String, u64)> {
    let out = s.exec(s.ni(ni), &["bpftool", "-j", "net", "show", "dev", port]);
    let net: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let progs = net
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|sec| sec.as_object().into_iter().flatten())
        .flat_map(|(_, l)| l.as_array().into_iter().flatten());
    progs.filter_map(|p| Some((p["name"].as_str()?.to_string(), p["id"].as_u64()?))).collect()
}

/// At our filters' priority (49152: also where a filter added without a priority lands)
/// someone else's filter sits: the agent does not overwrite it, and says
/// so. Here a u32 filter on the uplink, put there while the agent was stopped.
#[test]
fn someone_elses_filter_in_our_slot_is_left_alone() {
    let mut s = base();
    s.stop_agent();
    let tc = |s: &Scenario, args: &[&str]| {
        let out = s.exec(&s.zedbox, &[&["tc"][..], args].concat());
        assert!(out.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    tc(&s, &["filter", "del", "dev", "eth0", "ingress", "prio", "49152", "handle", "1", "bpf"]);
    tc(&s, &["filter", "add", "dev", "eth0", "ingress", "prio", "49152", "protocol", "all", "u32", "match", "u32", "0", "0"]);
    s.start_agent();
    let log = s.agent_log();
    assert!(log.contains("priority 49152 holds someone else's filter (u32"), "the apply names the filter in its way:\n{log}");
    let left = tc(&s, &["filter", "show", "dev", "eth0", "ingress"]);
    assert!(left.contains("u32") && !left.contains("nat_ingress"), "the u32 filter stays, nothing beside it: {left}");
    s.stop_agent();
    tc(&s, &["filter", "del", "dev", "eth0", "ingress", "prio", "49152", "protocol", "all", "u32"]);
}

/// A config that cannot apply is refused with every error, and nothing changes: not the
/// kernel state, not the traffic.
#[test]
fn a_bad_config_while_running_changes_nothing() {
    let s = base();
    let app1 = s.app("app1").to_string();
    let secs = scaled(Duration::from_secs(8)).as_secs().to_string();
    let loop_ = s.background(&app1, &["python3", &py_script("traffic_loop.py"), INET_IP, "7000", &secs, "0.1", "10.10.1.1", "app2"]);
    let before = observe(&s);
    let bad = [
        (BASE.replace("kind = \"local\"\nindex = 2", "kind = \"local\"\nmtu = 9000\nindex = 2"), vec!["mtu"]),
        (BASE.replace("network = \"@ni2\"", "network = \"nowhere\""), vec!["nowhere"]),
        (
            format!("{BASE}\n[[uplink]]\nname = \"eth9\"\n")
                .replace("uplink = \"eth0\"\n\n[[network]]\nname = \"@ni2\"", "uplink = \"eth9\"\n\n[[network]]\nname = \"@ni2\""),
            vec!["eth9", "does not exist"],
        ),
        (BASE.replace("netns = \"@app3\"", "netns = \"no-such-netns-x\""), vec!["no-such-netns-x"]),
    ];
    for (config, expect) in &bad {
        let out = s.apply(config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a bad config must be refused");
        assert!(err.contains("refused") && expect.iter().all(|e| err.contains(e)), "expected {expect:?} in: {err}");
    }
    assert_eq!(observe(&s), before, "a refused config changed the system");
    let traffic = json_of(&loop_.finish());
    assert_eq!(traffic["failed"].as_array().unwrap().len(), 0, "traffic saw errors: {traffic}");
}

/// `down` after the agent was killed (no chance to stop anything): no netns, link, pin
/// (a map pinned by an older agent under an earlier version too), dnsmasq or charon is
/// left.
#[test]
fn down_after_kill_leaves_nothing() {
    let config = format!(
        "{BASE}\n[[network]]\nname = \"@ni3\"\nkind = \"vpn\"\nindex = 3\nsubnet = \"10.10.10.0/24\"\ngateway = \"10.10.10.1\"\nuplink = \"eth0\"\n\
         [network.vpn]\nremote = \"192.168.0.1\"\npsk = \"k\"\nremote_ts = [\"192.168.50.0/24\"]\nbackend = \"{}\"\n",
        netns_tests::vpn_backend()
    );
    let mut s = Scenario::with_uplinks(&["ni1", "ni2", "ni3"], &["app1", "app2", "app3"], 1, &config);
    s.start_agent();
    let state_dir = s.state_dir.display().to_string();
    let ours = || -> Vec<String> {
        let out = Command::new("ps").args(["-eo", "pid,args"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| (l.contains("dnsmasq") && l.contains(&state_dir)) || l.contains("charon"))
            .map(str::to_string)
            .collect()
    };
    wait_until(scaled(Duration::from_secs(10)), || ours().iter().any(|l| l.contains("charon"))).expect("charon runs");
    assert!(ours().iter().filter(|l| l.contains("dnsmasq")).count() >= 3, "a dnsmasq per local NI: {:?}", ours());
    s.kill_agent();
    // A map an older agent pinned under a version since replaced (NAT_V1 before NAT_V2).
    let (stem, _) = map_names::NAT.rsplit_once("_V").unwrap();
    let older = s.pin_dir.join(format!("{stem}_V1"));
    let made = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&older)
        .args(["type", "hash", "key", "4", "value", "4", "entries", "1", "name", "older"])
        .output()
        .unwrap();
    assert!(made.status.success() && older.exists(), "{}", String::from_utf8_lossy(&made.stderr));
    let out = s.down();
    assert!(out.status.success(), "down: {}", String::from_utf8_lossy(&out.stderr));
    // SIGKILLed processes are gone once the kernel reaps them; their parent is dead.
    wait_until(scaled(Duration::from_secs(5)), || ours().iter().all(|l| l.contains("<defunct>") || l.contains("[")))
        .unwrap_or_else(|| panic!("service processes left: {:?}", ours()));
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

/// `down` while a process is still inside an NI's netns (someone's shell): that netns
/// outlives its name, so `down` deletes its links itself; nothing of ours is left, and
/// it says which process held the netns.
#[test]
fn down_with_a_process_left_in_an_ni_leaves_nothing() {
    let mut s = Scenario::with_uplinks(&["ni1", "ni2"], &["app1", "app2", "app3"], 1, BASE);
    s.start_agent();
    let ni1 = s.ni("ni1");
    let shell = s.background(ni1, &["sleep", "120"]);
    let pid = shell.pid();
    s.kill_agent();
    let out = s.down();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "down: {stderr}");
    assert!(stderr.contains(&format!("processes [{pid}] are still in its netns")), "{stderr}");
    assert_eq!(s.leftovers(), Vec::<String>::new());
    drop(shell);
}

/// A sequence of random valid configs (seeded, reproducible) applied one after the other
/// to one running agent: after each, the kernel state (links, addresses, routes, rules,
/// attached programs, map entries) equals what a fresh agent builds from that config
/// after `down`.
#[test]
fn random_config_sequences_converge_to_a_fresh_apply() {
    let seed: u64 = std::env::var("NETNS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    // The VM emulates every instruction: fewer steps there (NETNS_TEST_TIME_SCALE).
    let scale: u64 = std::env::var("NETNS_TEST_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let steps = (50 / scale.max(1)).max(5);
    let mut rng = Rng(seed);
    let mut s = Scenario::with_uplinks(&["ni1", "ni2", "ni3"], &["app1", "app2", "app3"], 2, &random_config(&mut rng));
    s.start_agent();
    let started = Instant::now();
    for step in 0..steps {
        let config = random_config(&mut rng);
        let out = s.apply(&config);
        assert!(out.status.success(), "step {step} (seed {seed}): {}\n{}", String::from_utf8_lossy(&out.stderr), s.expand(&config));
        let live = observe(&s);
        s.stop_agent();
        let down = s.down();
        assert!(down.status.success(), "down: {}", String::from_utf8_lossy(&down.stderr));
        s.start_agent();
        let fresh = observe(&s);
        if live != fresh {
            let only_live: Vec<_> = live.difference(&fresh).collect();
            let only_fresh: Vec<_> = fresh.difference(&live).collect();
            panic!(
                "step {step} (seed {seed}): live apply and fresh apply differ\nonly live: {only_live:#?}\nonly fresh: {only_fresh:#?}\nconfig:\n{}",
                s.expand(&config)
            );
        }
    }
    println!("{steps} random configs (seed {seed:#x}) converged, {:.1} s", started.elapsed().as_secs_f64());
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A valid config drawn from a small space: up to three local NIs (two subnets, eth0,
/// eth1 or no uplink), up to three apps with one or two interfaces, ACLs of up to four
/// ACEs (prefix, drop, limit, host, eidset, port map).
fn random_config(rng: &mut Rng) -> String {
    let mut out =
        String::from("[[uplink]]\nname = \"eth0\"\ndns = [\"10.99.0.10\"]\n[[uplink]]\nname = \"eth1\"\ndns = [\"10.99.0.10\"]\n");
    let mut nis = Vec::new();
    for k in 1..=3u32 {
        if !(rng.chance(70) || k == 3 && nis.is_empty()) {
            continue;
        }
        let subnet = ["10.10.1", "10.20.0"][rng.below(2) as usize];
        let uplink = ["eth0", "eth1", ""][rng.below(3) as usize];
        out += &format!(
            "\n[[network]]\nname = \"@ni{k}\"\nkind = \"local\"\nindex = {k}\nsubnet = \"{subnet}.0/24\"\ngateway = \"{subnet}.1\"\n"
        );
        if !uplink.is_empty() {
            out += &format!("uplink = \"{uplink}\"\n");
        }
        nis.push((k, uplink));
    }
    let mut used_ips = BTreeSet::new();
    let mut used_lports = BTreeSet::new();
    for a in 1..=3u32 {
        if !rng.chance(80) {
            continue;
        }
        out += &format!("\n[[app]]\nname = \"app{a}\"\nnum = {a}\nnetns = \"@app{a}\"\n");
        let mut on = Vec::new();
        for _ in 0..1 + rng.below(2) {
            let (ni, uplink) = nis[rng.below(nis.len() as u64) as usize];
            if on.contains(&ni) {
                continue;
            }
            on.push(ni);
            out += &format!("[[app.interface]]\nnetwork = \"@ni{ni}\"\n");
            let host = 2 + rng.below(4);
            if rng.chance(70) && used_ips.insert((ni, host)) {
                // The gateway's subnet: read back from the NI above.
                let subnet = out.split(&format!("name = \"@ni{ni}\"")).nth(1).and_then(|r| r.split("subnet = \"").nth(1)).unwrap();
                let prefix = &subnet[..subnet.find(".0/24").unwrap()];
                out += &format!("ip = \"{prefix}.{}\"\n", 100 + host);
            }
            let mut aces = Vec::new();
            for id in 1..=rng.below(5) {
                let ace = match rng.below(6) {
                    0 => "match = { ip = \"10.99.0.0/16\" }".to_string(),
                    1 => "match = { protocol = \"tcp\", fport = 80 }, action = \"drop\"".to_string(),
                    2 => format!(
                        "match = {{ protocol = \"udp\" }}, action = {{ limit = {{ rate = {}, unit = \"s\", burst = {} }} }}",
                        1 + rng.below(9),
                        10 + rng.below(9)
                    ),
                    3 => "match = { host = \"example.com\" }".to_string(),
                    4 => "match = { eidset = true }".to_string(),
                    _ => {
                        let lport = 8080 + rng.below(3);
                        if uplink.is_empty() || !used_lports.insert((uplink, lport)) {
                            continue;
                        }
                        format!("match = {{ protocol = \"tcp\", lport = {lport} }}, action = {{ portmap = 80 }}")
                    }
                };
                aces.push(format!("{{ id = {id}, {ace} }}"));
            }
            out += &format!("acl = [{}]\n", aces.join(", "));
        }
    }
    out
}

/// The scenario's kernel state, as lines that do not depend on when or in which order
/// things were made (no ifindexes, no ids, no counters): per namespace its links (kind,
/// bridge, up), addresses, routes and attached programs; the agent's rules and its
/// tables' routes; the map entries the agent writes, with interfaces by name.
fn observe(s: &Scenario) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    let mut names = std::collections::HashMap::new(); // (zone, ifindex) -> name
    let mut spaces = vec![(s.zedbox.clone(), "zedbox".to_string(), 0u32)];
    // The configs give NI `@niK` index K: its zone.
    for (placeholder, ni) in s.ni_names() {
        if Path::new("/run/netns").join(ni).exists() {
            spaces.push((ni.clone(), placeholder.clone(), placeholder[2..].parse().unwrap()));
        }
    }
    for (placeholder, app) in s.app_names() {
        spaces.push((app.clone(), placeholder.clone(), u32::MAX));
    }
    for (ns, label, zone) in &spaces {
        let ip = |args: &[&str]| -> Value {
            let out = s.exec(ns, &[&["ip", "-j"][..], args].concat());
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
        };
        let ours = |name: &str| zone != &0 || name.starts_with("veth") || name.starts_with("eth");
        for l in ip(&["-d", "link", "show"]).as_array().into_iter().flatten() {
            let name = l["ifname"].as_str().unwrap_or("").to_string();
            names.insert((*zone, l["ifindex"].as_u64().unwrap_or(0) as u32), name.clone());
            if !ours(&name) || (*zone == u32::MAX && !name.starts_with("nbu")) {
                continue;
            }
            let up = l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP"));
            let mac = if *zone == u32::MAX { l["address"].as_str().unwrap_or("") } else { "" };
            lines.insert(format!("{label} link {name} {} master={} up={up} {mac}", l["linkinfo"]["info_kind"], l["master"]));
        }
        for a in ip(&["-4", "addr", "show"]).as_array().into_iter().flatten() {
            let name = a["ifname"].as_str().unwrap_or("");
            for i in
                a["addr_info"].as_array().into_iter().flatten().filter(|_| ours(name) && (*zone != u32::MAX || name.starts_with("nbu")))
            {
                lines.insert(format!("{label} addr {name} {}/{}", i["local"], i["prefixlen"]));
            }
        }
        for r in ip(&["-4", "route", "show", "table", "all"]).as_array().into_iter().flatten() {
            let table = r["table"].as_str().unwrap_or("main").to_string();
            let ours_table = table.parse::<u32>().is_ok_and(|t| (500..700).contains(&t));
            if table == "local" || (*zone == 0 && !ours_table) || (*zone == u32::MAX && table != "main") {
                continue;
            }
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("flags");
            lines.insert(format!("{label} route {r}"));
        }
        if *zone == 0 {
            for r in ip(&["rule", "show"]).as_array().into_iter().flatten() {
                lines.insert(format!("{label} rule {r}"));
            }
        }
        if *zone != u32::MAX {
            let out = s.exec(ns, &["bpftool", "-j", "net", "show"]);
            let net: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            for section in net.as_array().into_iter().flatten() {
                for (kind, list) in section.as_object().into_iter().flatten() {
                    for p in list.as_array().into_iter().flatten() {
                        lines.insert(format!("{label} prog {kind} {} {} {}", p["devname"], p["kind"], p["name"]));
                    }
                }
            }
        }
    }
    let by_name = |zone: u64, ifindex: u64| names.get(&(zone as u32, ifindex as u32)).cloned().unwrap_or(format!("?{ifindex}"));
    for (map, drop_fields) in [
        ("IFACE_V3", &["acl_id"][..]),
        ("IFZONE_V1", &[][..]),
        ("EIDSET_V1", &[][..]),
        ("PORTMAP_V1", &["uplink_ifindex"][..]),
        ("NATIF_V1", &["uplink_ifindex"][..]),
        ("LIMIT_V1", &["tokens", "last_ns", "passed", "dropped"][..]),
    ] {
        for e in bpftool_dump(s, map) {
            let (mut key, mut value) = (e["key"].clone(), e["value"].clone());
            if let (Some(zone), Some(ifindex)) = (key["zone"].as_u64(), key["ifindex"].as_u64()) {
                key["ifindex"] = Value::String(by_name(zone, ifindex));
            }
            for f in drop_fields {
                if let Some(v) = value.as_object_mut() {
                    v.remove(*f);
                }
            }
            lines.insert(format!("map {map} {key} = {value}"));
        }
    }
    lines
}

/// A pinned map's entries as bpftool prints them with BTF: [{key, value}] by field.
fn bpftool_dump(s: &Scenario, map: &str) -> Vec<Value> {
    let path = s.pin_dir.join(map);
    let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&path).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| match e.get("formatted") {
            Some(f) => f.clone(),
            None => e.clone(),
        })
        .collect()
}

/// `[agent] expedite_rcu`: the kernel's setting is expedited only while the agent applies
/// or takes everything down, and is put back after each: a start, a change, a refused
/// change, `down`.
#[test]
fn expedited_grace_periods_end_with_each_apply() {
    let knob = || std::fs::read_to_string("/sys/kernel/rcu_expedited").unwrap().trim().to_string();
    assert_eq!(knob(), "0", "the machine's own setting, before the test");
    let mut s = Scenario::with_uplinks(&["ni1", "ni2", "ni3"], &["app1", "app2", "app3", "app4"], 1, BASE);
    s.set_agent_key("expedite_rcu = true");
    s.start_agent();
    assert_eq!(knob(), "0", "after the start's apply");
    assert!(s.whoami(s.app("app1"), INET_IP, 7000).is_none(), "no server yet");
    let changed = BASE.replace("fport = 7001", "fport = 7003");
    s.write_config(&changed);
    s.set_agent_key("expedite_rcu = true");
    let out = s.agent_cmd(&["apply", "--config", s.config_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(knob(), "0", "after a change");
    s.write_config(&changed.replace("[[app]]\nname = \"app2\"", "[[app]]\nname = \"app1\""));
    assert!(!s.agent_cmd(&["apply", "--config", s.config_path.to_str().unwrap()]).status.success(), "two apps named app1");
    assert_eq!(knob(), "0", "after a refused change");
    s.stop_agent();
    assert!(s.down().status.success());
    assert_eq!(knob(), "0", "after down");
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

/// An uplink added to the config before one in use takes a routing table of its own: the
/// one in use keeps its table, its NIs their one rule to it, and `down` removes both
/// tables (numbered by their place in the config, the new uplink took the other's table,
/// replaced its routes, and the other's NIs kept their rule to it).
#[test]
fn an_uplink_added_before_another_leaves_the_others_table_alone() {
    const APP3_ON_ETH1: &str = r#"
[[network]]
name = "@ni2"
kind = "local"
index = 2
subnet = "10.10.2.0/24"
gateway = "10.10.2.1"
uplink = "eth1"

[[app]]
name = "app3"
num = 3
netns = "@app3"
[[app.interface]]
network = "@ni2"
ip = "10.10.2.2"
acl = [{ id = 1, match = { ip = "10.99.0.0/16" } }]
"#;
    const APP1_ON_ETH0: &str = r#"
[[network]]
name = "@ni1"
kind = "local"
index = 1
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
uplink = "eth0"

[[app]]
name = "app1"
num = 1
netns = "@app1"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.2"
acl = [{ id = 1, match = { ip = "10.99.0.0/16" } }]
"#;
    let first = format!("[[uplink]]\nname = \"eth1\"\n{APP3_ON_ETH1}");
    let mut s = Scenario::with_uplinks(&["ni1", "ni2"], &["app1", "app3"], 2, &first);
    s.whoami_server(&s.inet.clone(), INET_IP, 7000);
    s.start_agent();
    let (app1, app3, z) = (s.app("app1").to_string(), s.app("app3").to_string(), s.zedbox.clone());
    assert!(s.whoami(&app3, INET_IP, 7000).is_some_and(|a| a.starts_with("192.168.1.2:")), "{}", s.agent_log());
    let second = format!("[[uplink]]\nname = \"eth0\"\n[[uplink]]\nname = \"eth1\"\n{APP3_ON_ETH1}{APP1_ON_ETH0}");
    let out = s.apply(&second);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), s.agent_log());
    let rules = String::from_utf8_lossy(&s.exec(&z, &["ip", "rule"]).stdout).to_string();
    let ni2_rules: Vec<&str> = rules.lines().filter(|l| l.contains("iif veth2")).collect();
    assert_eq!(ni2_rules.len(), 1, "one rule for NI2's traffic:\n{rules}");
    assert!(ni2_rules[0].ends_with("lookup 500"), "NI2 keeps eth1's table:\n{rules}");
    // Each NI leaves by its own uplink, with its address.
    for _ in 0..3 {
        assert!(s.whoami(&app3, INET_IP, 7000).is_some_and(|a| a.starts_with("192.168.1.2:")), "app3 by eth1\n{}", s.agent_log());
        assert!(s.whoami(&app1, INET_IP, 7000).is_some_and(|a| a.starts_with("192.168.0.2:")), "app1 by eth0\n{}", s.agent_log());
    }
    s.stop_agent();
    let out = s.down();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rules = String::from_utf8_lossy(&s.exec(&z, &["ip", "rule"]).stdout).to_string();
    assert!(!rules.contains("lookup 50"), "no rule to an uplink table after down:\n{rules}");
    for table in ["500", "501"] {
        let routes = String::from_utf8_lossy(&s.exec(&z, &["ip", "route", "show", "table", table]).stdout).to_string();
        assert!(routes.trim().is_empty(), "table {table} after down:\n{routes}");
    }
}

/// An app removed after its netns (and with it the port's veth) went already leaves no
/// flow behind: its conntrack entries and translations go all the same (they stayed,
/// kept alive by the remote's answers, which the next app given the address must not
/// get: its port drops another port's flow, and with the entries gone the answers are
/// unsolicited).
#[test]
fn an_app_whose_netns_went_first_leaves_no_flow_to_the_next_app_at_its_address() {
    let s = base();
    let (app2, app4, inet) = (s.app("app2").to_string(), s.app("app4").to_string(), s.inet.clone());
    let secs = scaled(Duration::from_secs(20)).as_secs().to_string();
    // The internet host answers app2's datagram again and again.
    let answers = "import socket,sys,time\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9999))\nprint('ready', flush=True)\ndata, peer = s.recvfrom(100)\nend = time.time() + float(sys.argv[2])\nwhile time.time() < end:\n  s.sendto(b'late answer', peer); time.sleep(0.1)";
    let mut remote = s.background(&inet, &["python3", "-u", "-c", answers, INET_IP, &secs]);
    assert_eq!(remote.read_line().trim(), "ready");
    let hello = "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('10.10.1.3', 5555)); s.sendto(b'hi', ('10.99.0.10', 9999)); s.settimeout(3); s.recv(100)";
    let out = s.python(&app2, hello, &[]);
    assert!(out.status.success(), "app2 hears the answers: {}", String::from_utf8_lossy(&out.stderr));
    // app2's netns goes (the port's veth with it), then the config gives app4 its address.
    assert!(Command::new("ip").args(["netns", "del", &app2]).status().unwrap().success());
    let app4_at_app2s_address =
        BASE.replacen("name = \"app2\"\nnum = 2\nnetns = \"@app2\"", "name = \"app4\"\nnum = 4\nnetns = \"@app4\"", 1);
    assert_ne!(app4_at_app2s_address, BASE);
    let out = s.apply(&app4_at_app2s_address);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), s.agent_log());
    let count = scaled(Duration::from_secs(3)).as_secs().to_string();
    let mut counter =
        s.background(&app4, &["python3", "-u", &py_script("count_arrivals.py"), "udp", &count, "late answer", "10.10.1.3", "5555"]);
    assert_eq!(counter.read_line().trim(), "ready");
    let out = counter.finish();
    let through: u64 = String::from_utf8_lossy(&out.stdout).lines().last().and_then(|l| l.trim().parse().ok()).expect("a count");
    println!("late answers to app2's flow that reached app4: {through}");
    assert_eq!(through, 0, "{}", s.agent_log());
    let report = s.flows_report();
    let left: Vec<_> = report.flows.iter().filter(|f| f.src == "10.10.1.3" && f.sport == 5555).collect();
    assert!(left.is_empty(), "app2's flow is gone: {left:?}\n{}", s.agent_log());
    let translated = report.nat.iter().filter(|n| (n.src == "10.10.1.3" && n.sport == 5555) || n.to == "10.10.1.3:5555").count();
    assert_eq!(translated, 0, "app2's translations are gone: {:?}", report.nat);
}
