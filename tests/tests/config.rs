//! Bad configs: a clear error naming key and line, and nothing changes on the system.

use netns_tests::Scenario;

const GOOD: &str = r#"
[[network]]
name = "@ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"

[[app]]
name = "app1"
netns = "@app1"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.2"
acl = [{ id = 1, match = { ip = "10.10.1.0/24" } }]
"#;

/// Line numbers in `expect` count the 4-line [agent] header the harness puts first.
fn run_bad(template: &str, expect: &[&str]) {
    let s = Scenario::new(&["ni1"], &["app1"], template);
    for cmd in ["validate", "run"] {
        let out = s.agent_cmd(&[cmd, "--config", s.config_path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} must reject the config");
        for e in expect {
            assert!(err.contains(&s.expand(e)), "{cmd}: expected {e:?} in:\n{err}");
        }
    }
    assert_eq!(s.leftovers(), Vec::<String>::new(), "a bad config changes nothing");
}

#[test]
fn unknown_key() {
    run_bad(&GOOD.replace("kind = \"local\"", "kind = \"local\"\nmtu = 9000"), &["netns-agent-test-", ":9:", "mtu"]);
}

#[test]
fn bad_prefix() {
    run_bad(&GOOD.replace("10.10.1.0/24\" } }", "10.10.1.0/40\" } }"), &[":18:", "10.10.1.0/40"]);
}

#[test]
fn interface_names_a_missing_network() {
    run_bad(&GOOD.replace("network = \"@ni1\"", "network = \"nowhere\""), &[":16:", "\"nowhere\"", "names no [[network]]"]);
}

#[test]
fn app_netns_does_not_exist() {
    run_bad(&GOOD.replace("netns = \"@app1\"", "netns = \"no-such-netns-x\""), &[":14:", "does not exist"]);
}

#[test]
fn duplicate_ace_ids() {
    run_bad(&GOOD.replace("acl = [{ id = 1,", "acl = [{ id = 1 }, { id = 1,"), &[":18:", "acl id 1 is used twice"]);
}

#[test]
fn a_subnet_over_the_devices_own_addresses() {
    let config = GOOD
        .replace("10.10.1.0/24\"\ngateway = \"10.10.1.1\"", "169.254.0.0/16\"\ngateway = \"169.254.0.1\"")
        .replace("10.10.1.2", "169.254.0.2");
    assert_ne!(config, GOOD);
    run_bad(&config, &[":9:", "overlaps the device's own addresses"]);
}

#[test]
fn an_app_in_a_networks_netns() {
    run_bad(&GOOD.replace("netns = \"@app1\"", "netns = \"@ni1\""), &[":14:", "is the netns of network"]);
}

#[test]
fn good_config_validates() {
    let s = Scenario::new(&["ni1"], &["app1"], GOOD);
    let out = s.agent_cmd(&["validate", "--config", s.config_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("config is valid"));
    assert_eq!(s.leftovers(), Vec::<String>::new(), "validate changes nothing");
}

/// Source NAT may not hand out the ports the device's own connections use.
#[test]
fn nat_ports_inside_the_kernels_ephemeral_range_are_refused() {
    let s = Scenario::new(&["ni1"], &["app1"], GOOD);
    s.set_agent_key("nat_port_range = [40000, 40099]");
    let out = s.agent_cmd(&["run", "--config", s.config_path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("overlaps the kernel's ephemeral ports"), "{err}");
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

/// A config that parses but cannot apply (its uplink is missing) is refused at start with
/// the reason, and leaves nothing: no netns, no pins, no record, no state dir.
#[test]
fn a_config_refused_at_start_leaves_nothing() {
    let with_uplink =
        format!("[[uplink]]\nname = \"eth9\"\n{}", GOOD.replace("gateway = \"10.10.1.1\"", "gateway = \"10.10.1.1\"\nuplink = \"eth9\""));
    let s = Scenario::new(&["ni1"], &["app1"], &with_uplink);
    let out = s.agent_cmd(&["run", "--config", s.config_path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("uplink eth9 does not exist") && err.contains("nothing was changed"), "{err}");
    assert_eq!(s.leftovers(), Vec::<String>::new());
    assert!(!s.state_dir.exists(), "the state dir stays unmade");
}
