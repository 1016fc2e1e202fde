//! EVE's own config as input: `convert` of the seed scenario's EdgeDevConfig gives the
//! demo's hand-written config; broken EdgeDevConfigs are refused with their JSON path;
//! `run --eve-config` applies one and follows its versions live, numbering apps by UUID.

use std::{path::PathBuf, process::Command};

use netns_tests::{agent_bin, EchoResult, Scenario, INET_IP};
use serde_json::{json, Value};

/// The seed scenario as an EdgeDevConfig (a copy of ../shared/evenet/scenario.json).
const SCENARIO: &str = include_str!("../eve/scenario.json");
/// The demo's hand-written config and the bindings that complete the EdgeDevConfig.
const DEMO_TOML: &str = include_str!("../../xtask/src/demo.toml");
const DEMO_BINDINGS: &str = include_str!("../../xtask/src/demo-bindings.toml");

/// A directory of this test's own, removed when it goes.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("netns-eve-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo bindings with a state dir of `dir`'s (no ids on record: numbering from 1).
fn demo_bindings(dir: &TempDir) -> String {
    let text = DEMO_BINDINGS.replace("@backend", "libipsec").replacen(
        "[agent]\n",
        &format!("[agent]\nstate_dir = \"{}/state\"\n", dir.0.display()),
        1,
    );
    dir.write("bindings.toml", &text)
}

fn convert(json: &str, bindings: &str) -> std::process::Output {
    Command::new(agent_bin()).args(["convert", "--eve-config", json, "--bindings", bindings]).output().expect("running netns-agent convert")
}

/// Every key of `want` is in `got` with the same value (tables by key, arrays by
/// position); the keys only `got` has are collected in `extra`.
fn contains(want: &toml::Value, got: &toml::Value, path: &str, extra: &mut Vec<String>) -> Result<(), String> {
    match (want, got) {
        (toml::Value::Table(w), toml::Value::Table(g)) => {
            for (k, v) in w {
                let p = format!("{path}.{k}");
                contains(v, g.get(k).ok_or_else(|| format!("{p}: missing from the converted config"))?, &p, extra)?;
            }
            extra.extend(g.keys().filter(|k| !w.contains_key(*k)).map(|k| format!("{path}.{k}")));
            Ok(())
        }
        (toml::Value::Array(w), toml::Value::Array(g)) if w.len() == g.len() => {
            w.iter().zip(g).enumerate().try_for_each(|(i, (w, g))| contains(w, g, &format!("{path}[{i}]"), extra))
        }
        (w, g) if w == g => Ok(()),
        (w, g) => Err(format!("{path}: the demo has {w}, the conversion {g}")),
    }
}

/// `convert` of scenario.json (with the demo's bindings) holds every field of the demo's
/// hand-written config, field by field; what it adds are the stable numbers and EVE's
/// DHCP ranges.
#[test]
fn the_seed_scenario_converts_to_the_demo_config() {
    let dir = TempDir::new("convert");
    let json = dir.write("scenario.json", SCENARIO);
    let out = convert(&json, &demo_bindings(&dir));
    assert!(out.status.success(), "convert failed: {}", String::from_utf8_lossy(&out.stderr));
    let converted: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).expect("convert prints TOML");
    let demo: toml::Value = toml::from_str(&DEMO_TOML.replace("@backend", "libipsec")).unwrap();
    let mut extra = Vec::new();
    if let Err(e) = contains(&demo, &converted, "", &mut extra) {
        panic!("{e}\nconverted:\n{converted}");
    }
    extra.sort();
    extra.dedup();
    println!("the conversion adds: {extra:?}");
    let allowed = |k: &str| k.ends_with(".index") || k.ends_with(".num") || k.ends_with(".dhcp_range") || k == ".agent.state_dir";
    assert!(extra.iter().all(|k| allowed(k)), "unexpected keys: {extra:?}");
    // Numbers follow the config's order on a device with no ids on record.
    let nums: Vec<i64> = converted["app"].as_array().unwrap().iter().map(|a| a["num"].as_integer().unwrap()).collect();
    assert_eq!(nums, [1, 2, 3, 4, 5, 6]);
}

/// Twenty-one broken EdgeDevConfigs: each refused, the error naming its JSON path.
#[test]
fn broken_edge_dev_configs_are_refused_with_their_json_path() {
    let dir = TempDir::new("broken");
    let bindings = demo_bindings(&dir);
    let base: Value = serde_json::from_str(SCENARIO).unwrap();
    type Break = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Break, &str)> = vec![
        ("unknown instType", Box::new(|c| c["networkInstances"][0]["instType"] = json!(7)), "networkInstances[0].instType 7: unsupported"),
        ("IPv6 NI", Box::new(|c| c["networkInstances"][1]["ipType"] = json!(2)), "networkInstances[1].ipType 2: only IPv4"),
        (
            "dangling networkId",
            Box::new(|c| c["apps"][1]["interfaces"][0]["networkId"] = json!("no-such-ni")),
            "apps[1].interfaces[0].networkId \"no-such-ni\": no network instance",
        ),
        (
            "bad CIDR",
            Box::new(|c| c["networkInstances"][0]["ip"]["subnet"] = json!("10.10.1.0/33")),
            "networkInstances[0].ip.subnet \"10.10.1.0/33\"",
        ),
        (
            "bad gateway",
            Box::new(|c| c["networkInstances"][2]["ip"]["gateway"] = json!("10.10.1.x")),
            "networkInstances[2].ip.gateway \"10.10.1.x\"",
        ),
        (
            "portmap without lport",
            Box::new(|c| {
                c["apps"][1]["interfaces"][0]["acls"][1]["matches"].as_array_mut().unwrap().retain(|m| m["type"] != "lport");
            }),
            "apps[1].interfaces[0].acls[1]: a portmap action needs an lport match",
        ),
        (
            "unsupported match",
            Box::new(|c| c["apps"][0]["interfaces"][0]["acls"][0]["matches"][0]["type"] = json!("adapter")),
            "apps[0].interfaces[0].acls[0].matches[0]: match type \"adapter\" is not supported",
        ),
        (
            "duplicate ACE ids",
            Box::new(|c| c["apps"][0]["interfaces"][0]["acls"][1]["id"] = json!(1)),
            "apps[0].interfaces[0].acls[1].id 1: a second ACE",
        ),
        ("unknown port", Box::new(|c| c["networkInstances"][0]["port"]["name"] = json!("eth9")), "networkInstances[0].port.name \"eth9\""),
        ("bad NI name", Box::new(|c| c["networkInstances"][0]["displayname"] = json!("ni 1")), "networkInstances[0].displayname \"ni 1\""),
        (
            "a DNS server not the gateway",
            Box::new(|c| c["networkInstances"][0]["ip"]["dns"] = json!(["8.8.8.8"])),
            "networkInstances[0].ip.dns[0] \"8.8.8.8\"",
        ),
        (
            "ACE id of the wrong type",
            Box::new(|c| c["apps"][0]["interfaces"][0]["acls"][0]["id"] = json!("one")),
            "at apps[0].interfaces[0].acls[0].id",
        ),
        (
            "a port that is not a number",
            Box::new(|c| c["apps"][1]["interfaces"][0]["acls"][0]["matches"][1]["value"] = json!("http")),
            "apps[1].interfaces[0].acls[0].matches[1]: fport \"http\"",
        ),
        (
            "a limit in days",
            Box::new(|c| c["apps"][5]["interfaces"][0]["acls"][0]["actions"][0]["limitunit"] = json!("d")),
            "apps[5].interfaces[0].acls[0].actions[0].limitunit \"d\"",
        ),
        (
            "an unknown protocol",
            Box::new(|c| c["apps"][1]["interfaces"][0]["acls"][1]["matches"][0]["value"] = json!("sctp6")),
            "apps[1].interfaces[0].acls[1].matches[0]: protocol \"sctp6\"",
        ),
        (
            "a field we do not support",
            Box::new(|c| c["apps"][0]["interfaces"][1]["accessVlanId"] = json!(20)),
            "apps[0].interfaces[1].accessVlanId 20: VLANs are not supported",
        ),
        (
            "static routes",
            Box::new(|c| {
                c["networkInstances"][1]["staticRoutes"] = json!([{"destinationNetwork": "10.0.0.0/8", "gateway": "192.168.1.1"}])
            }),
            "networkInstances[1].staticRoutes: static routes are not supported",
        ),
        (
            "encrypted user data",
            Box::new(|c| c["apps"][2]["cipherData"] = json!({"cipherContextId": "x"})),
            "apps[2].cipherData: encrypted user data",
        ),
        (
            "two apps of one name",
            Box::new(|c| c["apps"][1]["displayname"] = json!("app1")),
            "apps[1].displayname \"app1\": a second app of this name",
        ),
        (
            "a bad MAC",
            Box::new(|c| c["apps"][3]["interfaces"][0]["macAddress"] = json!("02:16:3e")),
            "apps[3].interfaces[0].macAddress \"02:16:3e\"",
        ),
        (
            "two actions",
            Box::new(|c| c["apps"][1]["interfaces"][0]["acls"][1]["actions"].as_array_mut().unwrap().push(json!({"drop": true}))),
            "apps[1].interfaces[0].acls[1].actions: one action per ACE",
        ),
    ];
    for (what, break_it, expected) in &cases {
        let mut config = base.clone();
        break_it(&mut config);
        let json = dir.write("broken.json", &config.to_string());
        let out = convert(&json, &bindings);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{what}: {}", stderr.trim().replace('\n', " | "));
        assert!(!out.status.success(), "{what}: accepted");
        assert!(stderr.contains(expected), "{what}: the error does not say {expected:?}:\n{stderr}");
    }
    // A VPN NI's tunnel is not in the EdgeDevConfig: without it in the bindings, refused.
    let no_vpn = dir.write("no-vpn.toml", &format!("[agent]\nstate_dir = \"{}/state\"\n", dir.0.display()));
    let out = convert(&dir.write("ok.json", SCENARIO), &no_vpn);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("networkInstances[3]: a VPN network instance's tunnel"), "{stderr}");
}

/// An EdgeDevConfig of one local NI and its apps, as a controller would send it.
fn edge_config(version: &str, ni: &str, apps: &[(&str, &str, Value)]) -> String {
    let ni_uuid = "11111111-0000-0000-0000-000000000001";
    json!({
        "id": {"uuid": "4fbbcb0c-91c0-41bd-8523-cb75c191e4b8", "version": version},
        "networkInstances": [{
            "uuidandversion": {"uuid": ni_uuid, "version": version},
            "displayname": ni, "instType": 2, "activate": true, "port": {"type": 1, "name": "uplink0"}, "ipType": 1,
            "ip": {"subnet": "10.10.1.0/24", "gateway": "10.10.1.1", "dns": ["10.10.1.1"], "dhcpRange": {"start": "10.10.1.100", "end": "10.10.1.200"}}
        }],
        "apps": apps.iter().map(|(name, uuid, acls)| json!({
            "uuidandversion": {"uuid": uuid, "version": version}, "displayname": name, "activate": true,
            // "#cloud-config\nhostname: eve-app1\n" for app1.
            "userData": if *name == "app1" { "I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogZXZlLWFwcDEK" } else { "" },
            "interfaces": [{"name": "default", "networkId": ni_uuid, "acls": acls}]
        })).collect::<Vec<_>>(),
        "systemAdapterList": [{"name": "uplink0", "uplink": true, "networkUUID": "22222222-0000-0000-0000-000000000001"}],
        "deviceIoList": [{"ptype": 1, "phylabel": "eth0", "phyaddrs": {"Ifname": "eth0"}, "logicallabel": "uplink0"}],
        "networks": [{"id": "22222222-0000-0000-0000-000000000001", "type": 4, "ip": {"dhcp": 4}}]
    })
    .to_string()
}

/// The ports of `status --json`, by app.
fn ports(s: &Scenario) -> Vec<(String, String)> {
    s.status().networks.into_iter().flat_map(|n| n.ports).map(|p| (p.app, p.port)).collect()
}

/// `run --eve-config` applies an EdgeDevConfig (its userData served); a new version (an
/// ACE added, an app removed, the apps reordered) applied live with `apply --eve-config`
/// changes what it says and keeps each app's number with its UUID, also across a
/// restart; a broken version changes nothing.
#[test]
fn an_edge_dev_config_runs_and_follows_its_versions() {
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2", "app3"], 1, "");
    let (inet, ni) = (s.inet.clone(), s.ni("ni1").to_string());
    s.echo_server(&inet, INET_IP, 7000);
    s.echo_server(&inet, INET_IP, 7001);
    let dir = TempDir::new("run");
    let bindings = dir.write(
        "bindings.toml",
        &format!(
            "[agent]\npin_dir = \"{}\"\nstate_dir = \"{}\"\n\n[app.app1]\nnetns = \"{}\"\n[[app.app1.interface]]\nip = \"10.10.1.2\"\n\n[app.app2]\nnetns = \"{}\"\n\n[app.app3]\nnetns = \"{}\"\n",
            s.pin_dir.display(),
            s.state_dir.display(),
            s.app("app1"),
            s.app("app2"),
            s.app("app3")
        ),
    );
    let (app1, app2, app3) =
        ("aaaaaaaa-0000-0000-0000-000000000001", "aaaaaaaa-0000-0000-0000-000000000002", "aaaaaaaa-0000-0000-0000-000000000003");
    let to_inet = |port: u16| json!({"id": port - 6999, "matches": [{"type": "ip", "value": INET_IP}, {"type": "protocol", "value": "tcp"}, {"type": "fport", "value": port.to_string()}]});
    let v1 = edge_config("1", &ni, &[("app1", app1, json!([to_inet(7000)])), ("app2", app2, json!([]))]);
    let json = dir.write("config.json", &v1);
    s.start_agent_with(&["--eve-config", &json, "--bindings", &bindings]);
    let status = s.status();
    assert_eq!(status.agent.eve_config.as_ref().map(|e| e.version.as_str()), Some("1"), "{status:?}");
    let before = ports(&s);
    println!("version 1: ports {before:?}");
    assert!(before.contains(&("app1".into(), "nbu1x1".into())) && before.contains(&("app2".into(), "nbu1x2".into())));
    let app1_ns = s.app("app1").to_string();
    assert_eq!(s.echo(&app1_ns, INET_IP, 7000, 100, None), EchoResult::Echoed(100));
    assert_ne!(s.echo(&app1_ns, INET_IP, 7001, 100, None), EchoResult::Echoed(100), "7001 is not allowed yet");
    let user_data = s.exec(&app1_ns, &["curl", "-s", "--max-time", "3", "http://169.254.169.254/user-data"]);
    assert_eq!(String::from_utf8_lossy(&user_data.stdout), "#cloud-config\nhostname: eve-app1\n", "userData, decoded");

    // Version 2: app3 comes first, app2 goes, app1 may reach 7001 too.
    let v2 = edge_config("2", &ni, &[("app3", app3, json!([])), ("app1", app1, json!([to_inet(7000), to_inet(7001)]))]);
    std::fs::write(&json, &v2).unwrap();
    let out = s.agent_cmd(&["apply", "--eve-config", &json, "--bindings", &bindings]);
    assert!(out.status.success(), "apply: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let after = ports(&s);
    println!("version 2: ports {after:?}");
    assert_eq!(s.status().agent.eve_config.map(|e| e.version).as_deref(), Some("2"));
    assert!(after.contains(&("app1".into(), "nbu1x1".into())), "app1 keeps its number though it moved in apps[]");
    assert!(!after.iter().any(|(a, _)| a == "app2"), "app2 is gone");
    assert!(after.iter().any(|(a, _)| a == "app3"));
    assert_eq!(s.echo(&app1_ns, INET_IP, 7001, 100, None), EchoResult::Echoed(100), "the added ACE applies");

    // A restart keeps the numbers (eve-ids.json), whatever the order.
    s.stop_agent();
    s.start_agent_with(&["--eve-config", &json, "--bindings", &bindings]);
    assert_eq!(ports(&s), after, "the same ports after a restart");

    // A broken version 3 is refused and changes nothing.
    let v3 = v2.replace("\"instType\":2", "\"instType\":9");
    assert_ne!(v3, v2);
    std::fs::write(&json, &v3).unwrap();
    let out = s.agent_cmd(&["apply", "--eve-config", &json, "--bindings", &bindings]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("networkInstances[0].instType 9"), "{stderr}");
    assert_eq!(s.status().agent.eve_config.map(|e| e.version).as_deref(), Some("2"));
    assert_eq!(ports(&s), after);
}
