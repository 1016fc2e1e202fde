//! `cargo xtask test --vm`: integration tests under Debian 12's stock kernel (6.1) in a
//! throw-away QEMU VM. This machine's kernel has TCX and no ESP; Debian's 6.1 has ESP and
//! no TCX. In the VM the VPN NIs run on kernel xfrm (what devices use), the programs are
//! attached as tc filters on clsact, and the older verifier checks them. Then (without a
//! test filter) the demo runs there too, on kernel xfrm.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{step, workspace_root};

/// What the VM script needs on the host (it boots the host's / over 9p).
pub const VM_PACKAGES: &[&str] = &["qemu-system-x86", "linux-image-amd64", "busybox-static", "cpio", "kmod"];

/// Guest time limit; the VM is emulated (TCG), about ten times slower than the host. The
/// suite (less `HOST_ONLY`) and the demo took 2885 s on the 2-core dev machine, on a day
/// its emulation ran at half its usual speed and the host ran tests beside it (with a
/// shorter `HOST_ONLY`, the suite had run out of this hour there): this leaves room for
/// a slower machine, and stops a hung guest well before CI's 90.
const VM_TIMEOUT_SECS: u32 = 3600;

pub fn run_tests(agent: &Path, args: &[String]) -> Result<()> {
    step("test --vm: building the integration test binaries");
    // Every integration test binary, the VPN ones (the reason for the VM) first: the rest
    // prove the tc-filter attachment and the older verifier.
    let mut binaries = test_binaries()?;
    binaries.sort_by_key(|(name, _)| (name != "vpn", name.clone()));
    let names: Vec<&str> = binaries.iter().map(|(n, _)| n.as_str()).collect();
    let dir = workspace_root().join("target/vm");
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut script = String::from("set -u\necho \"vm: kernel $(uname -r)\"\nrc=0\n");
    // No udev in the guest: /dev/net/tun (the tap test) appears once the module is loaded.
    script += "modprobe tun\n";
    // Ten times the host's waits: TCG emulates every instruction. The suite runs here
    // with the fast path off, on the host with it on; the fast path's own tests turn it
    // on here too, and the demo below runs with it (its default).
    script += "export NETNS_TEST_VPN_BACKEND=kernel NETNS_TEST_TIME_SCALE=10 NETNS_TEST_FAST_PATH=off RUST_BACKTRACE=1\n";
    script += &format!("export NETNS_AGENT_BIN={}\n", shell_quote(&agent.to_string_lossy()));
    let extra: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    let mut skipped = Vec::new();
    for (name, bin) in &binaries {
        let tests = if extra.is_empty() { test_names(bin)? } else { Vec::new() };
        script += &binary_script(name, bin, &tests, &extra, &mut skipped);
    }
    // A renamed test must not quietly move back into the VM stage (or its entry rot).
    if extra.is_empty() {
        if let Some((stale, _)) = HOST_ONLY.iter().find(|(t, _)| !skipped.contains(t)) {
            bail!("xtask/src/vm.rs HOST_ONLY names {stale}, which no test binary has");
        }
    }
    // Then the main job, the demo of the seed scenario, on the device kernel: its VPNs on
    // kernel xfrm (it finds ESP there). It builds nothing new: setup and build are no-ops.
    if args.is_empty() {
        let xtask = std::env::current_exe().context("the xtask binary's path")?;
        // The guest's init passes no HOME and a bare PATH; rustup and cargo need ours.
        let env: Vec<String> =
            ["HOME", "PATH"].iter().filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={}", shell_quote(&v)))).collect();
        script += &format!(
            "echo \"vm: === demo\"; start=$SECONDS\nenv {} {} demo || rc=1\necho \"vm: === demo took $((SECONDS - start)) s\"\n",
            env.join(" "),
            shell_quote(&xtask.to_string_lossy())
        );
    }
    script += "exit $rc\n";
    let script_path = out.join("run-tests.sh");
    std::fs::write(&script_path, script)?;

    let demo = if args.is_empty() { ", then the demo" } else { "" };
    step(&format!("test --vm: {}{demo} in Debian's stock kernel under QEMU (30 to 45 minutes)", names.join(", ")));
    let tests_dir = workspace_root().join("tests");
    let status = Command::new("bash")
        .current_dir(&tests_dir)
        .env("QEMU_VM_CACHE", dir.join("cache"))
        .arg(tests_dir.join("vm/qemu-kernel-vm.sh"))
        .args(["-o".as_ref(), out.as_os_str(), "-t".as_ref(), VM_TIMEOUT_SECS.to_string().as_ref(), "--".as_ref()])
        .arg("bash")
        .arg(&script_path)
        .status()
        .context("starting tests/vm/qemu-kernel-vm.sh")?;
    if !status.success() {
        bail!("tests in the VM failed ({status}); the guest console is in {}", out.join("console.log").display());
    }
    Ok(())
}

/// Tests that run on the host only: load tests whose floods and connection counts measure
/// this machine's CPU, not the kernel, and tests of the agent's own logic (config, EVE's
/// input, the reconciler's decisions, the flow log's timing, the DNS proxy). The VM stage
/// is for what the kernel decides: the verifier, tc filters put on, replaced and taken
/// off, the helpers and packet paths, xfrm. Every VM test starts an agent (6.1's verifier
/// takes ~20 s under TCG), and what a host-only test would prove there beyond that, that
/// the programs load and judge the same bytecode, the other tests of its binary prove
/// too. Each with why it is host only.
const HOST_ONLY: &[(&str, &str)] = &[
    ("a_flood_of_denied_tuples_evicts_no_live_flow", "a 500k-tuple flood"),
    ("a_syn_flood_at_a_port_map_leaves_other_nis_alone", "a 100k-SYN flood"),
    ("two_thousand_udp_flows_get_distinct_translations", "2000 flows through both NATs"),
    ("exhausted_port_space_drops_new_flows_and_keeps_working", "fills a NAT port range"),
    (
        "a_new_flows_first_packets_on_two_cpus_at_once_start_it_once_with_one_translation",
        "two processes spinning on the two CPUs, 12000 datagrams; at the VM's size the race may never meet",
    ),
    ("random_config_sequences_converge_to_a_fresh_apply", "dozens of applies and full dumps"),
    ("lost_events_are_counted", "12000 denied flows"),
    ("short_connections_and_denied_attempts_are_all_on_record", "hundreds of connections"),
    ("malformed_dns_and_floods_do_not_break_the_proxy", "a query flood at a userspace proxy"),
    ("a_slow_tcp_dns_client_holds_only_its_own_share", "userspace proxy under load"),
    ("the_log_rotates_and_follow_streams_live", "the agent's log rotation and streaming, userspace"),
    ("a_bad_config_while_running_changes_nothing", "config refusals, userspace; restarts and live edits stay in the VM"),
    ("spoofed_source_addresses_and_macs_get_nowhere", "scapy floods; programs.rs sends the same lies on 6.1 in seconds"),
    ("a_switch_ni_learns_the_apps_address_from_dhcp", "minutes of scapy DHCP under TCG; switch.rs covers switch NIs"),
    ("acl_swaps_under_traffic_drop_no_packet", "10,000-ACE applies under a timed UDP stream; programs.rs swaps 10,000 ACEs on 6.1"),
    ("a_ten_thousand_ace_acl_decides_by_position", "10,000-ACE applies; programs.rs decides and swaps 10,000 ACEs on 6.1"),
    ("cleanup_holds_when_a_test_fails_midway", "the test harness's own cleanup"),
    ("the_echo_client_reads_while_it_sends", "the test harness's own echo client"),
    (
        "an_edge_dev_config_runs_and_follows_its_versions",
        "EVE's config read and followed, userspace; the demo runs the seed scenario on 6.1",
    ),
    ("long_flows_get_interim_records_and_one_end", "the agent's interim records, userspace timing"),
    ("metrics_move_by_exactly_the_traffic_sent", "the agent's metrics, userspace; programs.rs checks the counters on 6.1"),
    ("short_connections_never_wear_out_the_nis_share", "hundreds of connections; the share's recount is userspace"),
    ("an_agent_with_acl_maps_of_a_new_version_writes_every_acl_anew", "map versions, userspace"),
    ("expedited_grace_periods_end_with_each_apply", "the reconciler's timers, userspace"),
    (
        "down_with_a_process_left_in_an_ni_leaves_nothing",
        "processes in a namespace, userspace; down_after_kill_leaves_nothing takes filters off on 6.1",
    ),
    ("removing_an_app_leaves_the_translations_of_flows_given_the_same_port", "the reconciler's map edits, userspace"),
    ("a_changed_port_map_leaves_flows_that_were_given_its_port", "the reconciler's map edits, userspace"),
    ("no_race_between_the_answer_and_the_first_connection", "the DNS proxy's ordering, userspace"),
    ("malformed_upstream_answers_get_servfail_and_insert_nothing", "the DNS proxy's parsing, userspace"),
    ("tcp_queries_are_forwarded_over_tcp", "the DNS proxy over TCP, userspace"),
    ("a_dns_update_is_refused_and_never_forwarded", "the DNS proxy's parsing, userspace"),
    ("a_held_dns_connection_asks_under_the_acl_of_the_moment", "the DNS proxy's view of an app, userspace"),
    ("a_slow_metadata_client_holds_only_its_own_share", "the metadata server's limits, userspace"),
    ("an_answer_racing_an_acl_change_opens_no_address_to_another_ace", "the DNS proxy against the applier, userspace"),
    ("a_host_ace_that_names_another_domain_judges_its_flows_again", "the applier's ACL comparison, userspace"),
    (
        "answers_while_the_agent_starts_go_in_under_the_live_acl",
        "the agent's start, userspace; a_flow_of_a_host_ace_lives_through_changes_that_move_the_ace runs host ACEs' bits on 6.1",
    ),
];

/// The guest script's part for one test binary: each test run on its own (`--exact`) and
/// timed, so the console shows where the VM stage's time goes; host-only ones skipped
/// unless a filter was given (then the filter decides).
fn binary_script(name: &str, bin: &Path, tests: &[String], extra: &[String], skipped: &mut Vec<&'static str>) -> String {
    let quoted = shell_quote(&bin.to_string_lossy());
    if !extra.is_empty() {
        return format!(
            "echo \"vm: === {name}\"; start=$SECONDS\n{quoted} --test-threads=1 {} || rc=1\necho \"vm: === {name} took $((SECONDS - start)) s\"\n",
            extra.join(" ")
        );
    }
    let mut script = format!("echo \"vm: === {name}\"; start=$SECONDS\n");
    for test in tests {
        if let Some((host_only, why)) = HOST_ONLY.iter().find(|(t, _)| t == test) {
            skipped.push(host_only);
            script += &format!("echo {}\n", shell_quote(&format!("vm: skip {test} (host only: {why})")));
            continue;
        }
        let test = shell_quote(test);
        script += &format!(
            "t0=$SECONDS; {quoted} --exact {test} --test-threads=1 -q || rc=1; echo \"vm: {name}::\"{test}\" took $((SECONDS - t0)) s\"\n"
        );
    }
    script += &format!("echo \"vm: === {name} took $((SECONDS - start)) s\"\n");
    script
}

/// The tests of one built test binary (`--list --format terse`: "name: test").
fn test_names(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new(bin)
        .args(["--list", "--format", "terse"])
        .output()
        .with_context(|| format!("listing the tests of {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} --list failed:\n{}", bin.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_suffix(": test").map(str::to_string)).collect())
}

/// (name, executable) of each integration test binary of `netns-tests`, built.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["test", "-p", "netns-tests", "--tests", "--no-run", "--message-format=json"])
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" || msg["target"]["kind"][0] != "test" {
            continue;
        }
        if let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str()) {
            binaries.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(binaries)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_script_runs_each_test_and_skips_the_host_only_ones() {
        let tests = vec!["a_test".to_string(), HOST_ONLY[0].0.to_string()];
        let mut skipped = Vec::new();
        let script = binary_script("nat", Path::new("/x/nat-1"), &tests, &[], &mut skipped);
        assert_eq!(skipped, vec![HOST_ONLY[0].0]);
        assert!(script.contains("'/x/nat-1' --exact 'a_test' --test-threads=1"), "{script}");
        assert!(!script.contains(&format!("--exact '{}'", HOST_ONLY[0].0)), "{script}");
        // Syntax of the whole script, the reasons' words included.
        let check = Command::new("bash").args(["-n", "-c", &script]).status().unwrap();
        assert!(check.success(), "{script}");
    }
}
