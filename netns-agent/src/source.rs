//! Where the agent's config comes from: our TOML file, or EVE's EdgeDevConfig (plus a
//! bindings file), converted to the same TOML and validated the same way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing::info;

use crate::{config, eve};

#[derive(Debug, Clone)]
pub enum ConfigSource {
    Toml(PathBuf),
    Eve { config: PathBuf, bindings: Option<PathBuf> },
}

impl ConfigSource {
    /// From the command line: exactly one of `--config` and `--eve-config`.
    pub fn from_args(config: Option<PathBuf>, eve_config: Option<PathBuf>, bindings: Option<PathBuf>) -> Result<ConfigSource> {
        match (config, eve_config, bindings) {
            (Some(c), None, None) => Ok(ConfigSource::Toml(c)),
            (None, Some(e), b) => Ok(ConfigSource::Eve { config: e, bindings: b }),
            (Some(_), Some(_), _) => anyhow::bail!("give --config or --eve-config, not both"),
            (Some(_), None, Some(_)) => anyhow::bail!("--bindings goes with --eve-config"),
            (None, None, _) => anyhow::bail!("give --config FILE.toml or --eve-config FILE.json"),
        }
    }

    /// The file the agent follows (SIGHUP reads it again).
    pub fn path(&self) -> &Path {
        match self {
            ConfigSource::Toml(p) => p,
            ConfigSource::Eve { config, .. } => config,
        }
    }

    /// The agent's state directory this config names.
    pub fn state_dir(&self) -> Result<PathBuf> {
        match self {
            ConfigSource::Toml(p) => Ok(config::agent_dirs(p)?.1),
            ConfigSource::Eve { bindings, .. } => eve::state_dir(bindings.as_deref()),
        }
    }

    /// The same source with its paths absolute (the agent may be asked from elsewhere).
    pub fn canonical(&self) -> ConfigSource {
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        match self {
            ConfigSource::Toml(p) => ConfigSource::Toml(abs(p)),
            ConfigSource::Eve { config, bindings } => ConfigSource::Eve { config: abs(config), bindings: bindings.as_deref().map(abs) },
        }
    }

    /// The validated config. An EdgeDevConfig is converted with the NI indexes and app
    /// numbers on record; `Loaded::ids` are the ones to keep once it is applied.
    pub fn load(&self) -> Result<Loaded> {
        match self {
            ConfigSource::Toml(path) => Ok(Loaded { config: config::Config::load(path)?, eve: None }),
            ConfigSource::Eve { config: path, bindings } => {
                let state_dir = eve::state_dir(bindings.as_deref())?;
                let converted = eve::load(path, bindings.as_deref(), eve::EveIds::read(&state_dir)?)?;
                let text = converted.to_toml(path)?;
                let name = format!("{} (as converted: see `netns-agent convert`)", path.display());
                let config = config::parse(&name, &text, &config::SystemNetns)?;
                info!("EdgeDevConfig {} version {:?}", path.display(), converted.version);
                let record = crate::state::EveConfigRecord { path: path.clone(), version: converted.version };
                Ok(Loaded { config, eve: Some(EveApplied { ids: converted.ids, record, state_dir }) })
            }
        }
    }
}

/// A config ready to apply.
pub struct Loaded {
    pub config: config::Config,
    pub eve: Option<EveApplied>,
}

/// What an EdgeDevConfig's apply keeps: its ids, its file and version.
pub struct EveApplied {
    ids: eve::EveIds,
    record: crate::state::EveConfigRecord,
    state_dir: PathBuf,
}

impl Loaded {
    /// Once applied: an EdgeDevConfig's ids and version go on record.
    pub fn applied(&self, applier: &mut crate::reconcile::Applier) -> Result<()> {
        applier.set_eve_config(self.eve.as_ref().map(|e| e.record.clone()))?;
        if let Some(e) = &self.eve {
            e.ids.write(&e.state_dir).context("keeping the EdgeDevConfig's NI indexes and app numbers")?;
        }
        Ok(())
    }
}
