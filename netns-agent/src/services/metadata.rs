//! The metadata server of an NI, on its gateway:80 (apps reach it at 169.254.169.254,
//! translated by the app-port programs). An app is known by the NI and its source address
//! (NIs may overlap: each NI has its own server). Serves cloud-init's NoCloud files and
//! EVE's /eve/v1 endpoints that apply here; unknown paths 404, non-apps get nothing.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result};
use axum::{
    extract::{ConnectInfo, Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use tracing::info;

use crate::{netlink::Uplinks, netns::Netns};

#[derive(Debug, Clone)]
pub struct AppMeta {
    pub app: String,
    pub user_data: Option<String>,
}

#[derive(Clone)]
pub struct NiMetaConfig {
    pub ni: String,
    pub gateway: Ipv4Addr,
    pub apps: HashMap<Ipv4Addr, AppMeta>,
    /// The NI's uplink, looked up in `uplinks` (kept current by the agent) per request.
    pub uplink: Option<String>,
    pub uplinks: Arc<RwLock<Uplinks>>,
}

/// A running metadata server: its config can be swapped, and it can be stopped.
pub struct MetaHandle {
    cfg: Arc<RwLock<Arc<NiMetaConfig>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MetaHandle {
    /// The NI's apps changed: the next request sees the new config.
    pub fn update(&self, cfg: NiMetaConfig) {
        *self.cfg.write().unwrap() = Arc::new(cfg);
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

type Shared = Arc<RwLock<Arc<NiMetaConfig>>>;

pub fn spawn(cfg: NiMetaConfig, ns: &Netns) -> Result<MetaHandle> {
    let addr = SocketAddr::from((cfg.gateway, 80));
    let listener = crate::netns::run_in(ns, || {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    info!("{}: metadata server on {addr}", cfg.ni);
    let shared: Shared = Arc::new(RwLock::new(Arc::new(cfg)));
    let router = Router::new()
        .route("/eve/v1/{item}", get(eve))
        .route("/{item}", get(nocloud))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(shared.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    Ok(MetaHandle { cfg: shared, task })
}

type Caller = ConnectInfo<SocketAddr>;

fn app_of(cfg: &NiMetaConfig, caller: &SocketAddr) -> Option<AppMeta> {
    match caller {
        SocketAddr::V4(a) => cfg.apps.get(a.ip()).cloned(),
        SocketAddr::V6(_) => None,
    }
}

fn external_ipv4(cfg: &NiMetaConfig) -> String {
    let uplinks = cfg.uplinks.read().unwrap();
    cfg.uplink.as_ref().and_then(|u| uplinks.get(u)).map(|u| u.ip.to_string()).unwrap_or_default()
}

async fn eve(State(shared): State<Shared>, ConnectInfo(caller): Caller, Path(item): Path<String>) -> Response {
    let cfg = shared.read().unwrap().clone();
    let Some(app) = app_of(&cfg, &caller) else { return StatusCode::NOT_FOUND.into_response() };
    match item.as_str() {
        "network.json" => Json(serde_json::json!({
            "caller-ip": caller.to_string(),
            "external-ipv4": external_ipv4(&cfg),
            "hostname": app.app,
            "name": app.app,
        }))
        .into_response(),
        "external_ipv4" => external_ipv4(&cfg).into_response(),
        "hostname" => app.app.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// cloud-init's NoCloud (seedfrom http://169.254.169.254/) files.
async fn nocloud(State(shared): State<Shared>, ConnectInfo(caller): Caller, Path(item): Path<String>) -> Response {
    let cfg = shared.read().unwrap().clone();
    let Some(app) = app_of(&cfg, &caller) else { return StatusCode::NOT_FOUND.into_response() };
    match item.as_str() {
        "user-data" => match app.user_data {
            Some(u) => u.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        "meta-data" => format!("instance-id: {}\nlocal-hostname: {}\n", app.app, app.app).into_response(),
        "vendor-data" => String::new().into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
