//! The metadata server of an NI, on its gateway:80 (apps reach it at 169.254.169.254,
//! translated by the app-port programs). An app is known by the app port its connection
//! came through (the mark of its SYN, see `caller`), and its source address must be that
//! app's on this NI (NIs may overlap: each NI has its own server). Serves cloud-init's
//! NoCloud files and EVE's /eve/v1 endpoints that apply here; unknown paths 404,
//! non-apps get nothing.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result};
use axum::{
    extract::{connect_info::Connected, ConnectInfo, Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    serve::IncomingStream,
    Json, Router,
};
use tracing::info;

use crate::{netlink::Uplinks, netns::Netns};

#[derive(Debug, Clone)]
pub struct AppMeta {
    pub app: String,
    /// The app's address on this NI.
    pub ip: Ipv4Addr,
    pub user_data: Option<String>,
}

#[derive(Clone)]
pub struct NiMetaConfig {
    pub ni: String,
    pub gateway: Ipv4Addr,
    /// By app number (the top byte of the connection mark).
    pub apps: HashMap<u32, AppMeta>,
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
        let _ = axum::serve(listener, router.into_make_service_with_connect_info::<Caller>()).await;
    });
    Ok(MetaHandle { cfg: shared, task })
}

/// A connection's peer and the mark its SYN carried.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    addr: SocketAddr,
    mark: u32,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Caller { addr: *stream.remote_addr(), mark: super::caller::tcp_mark(stream.io()) }
    }
}

/// The app behind the port the connection came through, if its address is that app's.
fn app_of(cfg: &NiMetaConfig, caller: &Caller) -> Option<AppMeta> {
    let app = cfg.apps.get(&super::caller::app_num(caller.mark))?;
    match caller.addr {
        SocketAddr::V4(a) if *a.ip() == app.ip => Some(app.clone()),
        _ => None,
    }
}

fn external_ipv4(cfg: &NiMetaConfig) -> String {
    let uplinks = cfg.uplinks.read().unwrap();
    cfg.uplink.as_ref().and_then(|u| uplinks.get(u)).map(|u| u.ip.to_string()).unwrap_or_default()
}

async fn eve(State(shared): State<Shared>, ConnectInfo(caller): ConnectInfo<Caller>, Path(item): Path<String>) -> Response {
    let cfg = shared.read().unwrap().clone();
    let Some(app) = app_of(&cfg, &caller) else { return StatusCode::NOT_FOUND.into_response() };
    match item.as_str() {
        "network.json" => Json(serde_json::json!({
            "caller-ip": caller.addr.to_string(),
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
async fn nocloud(State(shared): State<Shared>, ConnectInfo(caller): ConnectInfo<Caller>, Path(item): Path<String>) -> Response {
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
