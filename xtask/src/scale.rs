//! `cargo xtask bench`, last part: apply at scale. 60 local NIs on eth0 with 4 apps each
//! (240 app namespaces, one ACE each) applied by a fresh agent from nothing, then `down`:
//! wall times, the agent's own apply time and its resident memory once applied.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    bench::{agent_down, last_apply, start_agent_with},
    demo::{sh, step, stop_agent, ZEDBOX},
};

pub const NIS: u32 = 60;
pub const APPS_PER_NI: u32 = 4;
/// Its own pins and record: nothing of the bench's agent is touched.
const PIN_DIR: &str = "/sys/fs/bpf/netns-agent-scale";
const STATE_DIR: &str = "/run/netns-agent-scale";

fn app_netns(ni: u32, k: u32) -> String {
    format!("scale-a{ni}x{k}")
}

fn config(expedite_rcu: bool) -> String {
    let mut c = format!(
        "[agent]\npin_dir = \"{PIN_DIR}\"\nstate_dir = \"{STATE_DIR}\"\nexpedite_rcu = {expedite_rcu}\n\n[[uplink]]\nname = \"eth0\"\n"
    );
    for ni in 1..=NIS {
        c += &format!(
            "\n[[network]]\nname = \"sc{ni}\"\nkind = \"local\"\nsubnet = \"172.16.{ni}.0/24\"\ngateway = \"172.16.{ni}.1\"\nuplink = \"eth0\"\n"
        );
        for k in 1..=APPS_PER_NI {
            c += &format!(
                "\n[[app]]\nname = \"sc{ni}app{k}\"\nnetns = \"{}\"\n[[app.interface]]\nnetwork = \"sc{ni}\"\nip = \"172.16.{ni}.{}\"\nacl = [{{ id = 1, match = {{ ip = \"0.0.0.0/0\" }} }}]\n",
                app_netns(ni, k),
                k + 1
            );
        }
    }
    c
}

/// Removes the scale run's namespaces and record whatever happened.
struct Cleanup<'a> {
    agent_bin: &'a Path,
    config: &'a Path,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ZEDBOX}"))
            .arg(self.agent_bin)
            .args(["down", "--config"])
            .arg(self.config)
            .stderr(Stdio::null())
            .status();
        for ni in 1..=NIS {
            for k in 1..=APPS_PER_NI {
                let _ = Command::new("ip").args(["netns", "del", &app_netns(ni, k)]).stderr(Stdio::null()).status();
            }
        }
    }
}

/// Runs the scale case in the bench's world (zedbox with eth0); the bench's own agent
/// must be down. Twice: as configured by default, then with `[agent] expedite_rcu`
/// (RCU grace periods expedited while the agent applies and takes everything down).
/// Prints its rows.
pub fn run(agent_bin: &Path, dir: &Path) -> Result<()> {
    step(&format!("apply at scale: {NIS} NIs x {APPS_PER_NI} apps from nothing, then down; without and with expedite_rcu"));
    let config = dir.join("scale.toml");
    std::fs::write(&config, config_text(false))?;
    let _cleanup = Cleanup { agent_bin, config: &config };
    for ni in 1..=NIS {
        for k in 1..=APPS_PER_NI {
            sh(&["ip", "netns", "add", &app_netns(ni, k)])?;
        }
    }
    let mut rows = Vec::new();
    for expedite in [false, true] {
        std::fs::write(&config, config_text(expedite))?;
        rows.push((expedite, measure(agent_bin, &config, &dir.join(format!("scale-agent-{expedite}.log")))?));
    }
    println!("  {:<50} {:>10} {:>14}", "", "seconds", "expedite_rcu");
    let row = |label: &str, f: &dyn Fn(&Scale) -> f64| {
        println!("  {label:<50} {:>10.1} {:>14.1}", f(&rows[0].1), f(&rows[1].1));
    };
    row("run from nothing until applied (wall)", &|m| m.applied);
    row("  of which the apply (agent's own report)", &|m| m.own);
    row("down (wall)", &|m| m.down);
    for (expedite, m) in &rows {
        println!(
            "  expedite_rcu = {expedite}: agent RSS once applied {:.1} MiB; apply errors: {}; the agent's log: {}",
            m.rss_kib as f64 / 1024.0,
            m.errors,
            m.log.display()
        );
    }
    Ok(())
}

/// One scale run: a fresh agent from nothing until applied, then `down`.
struct Scale {
    applied: f64,
    own: f64,
    down: f64,
    rss_kib: u64,
    errors: usize,
    log: std::path::PathBuf,
}

fn measure(agent_bin: &Path, config: &Path, log: &Path) -> Result<Scale> {
    let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let started = Instant::now();
    let agent = start_agent_with(agent_bin, config, Path::new(STATE_DIR), Duration::from_secs(300), log_file.into())?;
    let applied = started.elapsed().as_secs_f64();
    let (own_ms, errors) = last_apply(Path::new(STATE_DIR));
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", agent.id()))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.trim().parse::<u64>().ok()))
        .unwrap_or(0);
    stop_agent(&mut { agent })?;
    let started = Instant::now();
    agent_down(agent_bin, config)?;
    let down = started.elapsed().as_secs_f64();
    Ok(Scale { applied, own: own_ms / 1000.0, down, rss_kib, errors, log: log.to_path_buf() })
}

fn config_text(expedite_rcu: bool) -> String {
    format!("# cargo xtask bench: apply at scale, {NIS} NIs x {APPS_PER_NI} apps.\n{}", config(expedite_rcu))
}
