//! The agent's requests over a charon's vici socket: initiate the tunnel, list its SAs.

use std::collections::HashMap;

use anyhow::Result;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::CONN;

#[derive(Debug, Serialize)]
struct InitiateRequest {
    child: &'static str,
    /// -1: answer at once, the exchange goes on in charon.
    timeout: i32,
    #[serde(rename = "init-limits")]
    init_limits: bool,
}

pub(super) async fn initiate(client: &mut rsvici::Client) -> Result<()> {
    let _: serde::de::IgnoredAny = client.request("initiate", InitiateRequest { child: CONN, timeout: -1, init_limits: false }).await?;
    Ok(())
}

/// One IKE_SA as vici's `list-sa` event carries it (numbers arrive as strings).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IkeSa {
    pub state: String,
    pub local_host: Option<String>,
    pub local_port: Option<String>,
    pub remote_host: Option<String>,
    pub remote_port: Option<String>,
    pub local_id: Option<String>,
    pub remote_id: Option<String>,
    #[serde(default)]
    pub child_sas: HashMap<String, ChildSa>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChildSa {
    pub name: String,
    pub state: String,
    pub mode: Option<String>,
    pub encap: Option<String>,
    pub bytes_in: Option<String>,
    pub packets_in: Option<String>,
    pub bytes_out: Option<String>,
    pub packets_out: Option<String>,
    #[serde(default)]
    pub local_ts: Vec<String>,
    #[serde(default)]
    pub remote_ts: Vec<String>,
}

pub(super) async fn list_sas(client: &mut rsvici::Client) -> Result<Vec<IkeSa>> {
    let stream = client.stream_request::<(), HashMap<String, IkeSa>>("list-sas", "list-sa", ());
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(event) = stream.next().await {
        out.extend(event?.into_values());
    }
    Ok(out)
}
