//! The metadata server of an NI, on its gateway:80 (apps reach it at 169.254.169.254,
//! translated by the app-port programs). An app is known by the app port its connection
//! came through (the mark of its SYN, see `caller`), and its source address must be that
//! app's on this NI (NIs may overlap: each NI has its own server). Serves an index at
//! `/`, cloud-init's NoCloud files and OpenStack data source paths, and EVE's /eve/v1
//! endpoints that apply here; unknown paths 404 with a short text, non-apps get nothing.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context, Result};
use axum::{
    extract::{ConnectInfo, Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use serde::Serialize;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::share::Shares;
use crate::{netlink::Uplinks, netns::Netns};

/// Connections the server holds at once, and of those one app (callers that are no app
/// share one count): a flood of idle connections from one app is shed, and the others'
/// requests are still served.
const MAX_CONNECTIONS: usize = 64;
const MAX_CONNECTIONS_PER_APP: usize = 8;
/// A request's head must have arrived this long after the connection opened or the
/// previous answer went.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives, kept alive or not, however its client dawdles.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The most a connection's read buffer takes (hyper's smallest allowed is 8 KiB): the
/// request heads this server answers are small.
const MAX_BUFFER: usize = 16 << 10;

#[derive(Debug, Clone)]
pub struct AppMeta {
    pub app: String,
    pub app_num: u32,
    /// The app's address on this NI, and its interface's MAC.
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub user_data: Option<String>,
}

#[derive(Clone)]
pub struct NiMetaConfig {
    pub ni: String,
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    /// By app number (the top byte of the connection mark) and address: an app may have
    /// two interfaces on one NI.
    pub apps: HashMap<(u32, Ipv4Addr), AppMeta>,
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
    let listener = TcpListener::from_std(listener)?;
    info!("{}: metadata server on {addr}", cfg.ni);
    let shared: Shared = Arc::new(RwLock::new(Arc::new(cfg)));
    let router = Router::new()
        .route("/", get(index))
        .route("/eve/v1/{item}", get(eve))
        .route("/eve/v1/app/info.json", get(app_info))
        .route("/openstack", get(openstack_versions))
        .route("/openstack/{version}/{item}", get(openstack))
        .route("/{item}", get(nocloud))
        .fallback(fallback)
        .with_state(shared.clone());
    let ni = shared.read().unwrap().ni.clone();
    let task = tokio::spawn(serve(listener, router, ni));
    Ok(MetaHandle { cfg: shared, task })
}

/// Accepts connections while the server runs, each served in a task of `connections`
/// (aborted with the server: `MetaHandle::stop`) within the server's and its app's
/// share, hyper's header timeout and `CONNECTION_LIFETIME`.
async fn serve(listener: TcpListener, router: Router, ni: String) {
    let total = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_app = Shares::new(MAX_CONNECTIONS_PER_APP);
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(MAX_BUFFER);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: retried after a pause, not in a spin.
                warn!("{ni}: metadata server accept: {e}");
                tokio::time::sleep(super::ACCEPT_RETRY).await;
                continue;
            }
        };
        let caller = Caller { addr, mark: super::caller::tcp_mark(&stream) };
        let Some(app_share) = per_app.take(super::caller::app_num(caller.mark)) else {
            debug!("{ni}: {addr} holds its share of metadata connections");
            continue;
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            debug!("{ni}: metadata server full, {addr} turned away");
            continue;
        };
        // The caller goes into each request as axum's `ConnectInfo` (the router itself is
        // shared: a layer per connection would wrap its every route anew).
        let service = TowerToHyperService::new(router.clone().map_request(move |mut request: axum::extract::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(caller));
            request
        }));
        let connection = http.serve_connection(TokioIo::new(stream), service);
        connections.spawn(async move {
            let _held = (permit, app_share);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

/// A connection's peer and the mark its SYN carried.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    addr: SocketAddr,
    mark: u32,
}

/// The app behind the port the connection came through, if its address is that app's.
fn app_of(cfg: &NiMetaConfig, caller: &Caller) -> Option<AppMeta> {
    match caller.addr {
        SocketAddr::V4(a) => cfg.apps.get(&(super::caller::app_num(caller.mark), *a.ip())).cloned(),
        _ => None,
    }
}

fn external_ipv4(cfg: &NiMetaConfig) -> String {
    let uplinks = cfg.uplinks.read().unwrap();
    cfg.uplink.as_ref().and_then(|u| uplinks.get(u)).map(|u| u.ip.to_string()).unwrap_or_default()
}

/// What `/` lists: every path this server answers.
const INDEX: &[&str] = &[
    "eve/v1/network.json",
    "eve/v1/external_ipv4",
    "eve/v1/hostname",
    "eve/v1/discover-network.json",
    "eve/v1/app/info.json",
    "meta-data",
    "user-data",
    "vendor-data",
    "openstack/latest/meta_data.json",
    "openstack/latest/user_data",
    "openstack/latest/network_data.json",
    "openstack/latest/vendor_data.json",
];

fn not_found(path: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("not found: {path}\n")).into_response()
}

/// A path this server does not answer: said so to an app, and to anyone else only that
/// it is no app's.
async fn fallback(State(shared): State<Shared>, ConnectInfo(caller): ConnectInfo<Caller>, uri: axum::http::Uri) -> Response {
    match app_of(&shared.read().unwrap(), &caller) {
        Some(_) => not_found(uri.path()),
        None => not_an_app(),
    }
}

/// A caller that is no app of this NI (or not from its port) gets nothing, not even the index.
fn not_an_app() -> Response {
    (StatusCode::NOT_FOUND, "not an app of this network\n").into_response()
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

async fn index(State(shared): State<Shared>, ConnectInfo(caller): ConnectInfo<Caller>) -> Response {
    let cfg = shared.read().unwrap().clone();
    if app_of(&cfg, &caller).is_none() {
        return not_an_app();
    }
    let mut text = format!("metadata of network instance {} (EVE /eve/v1, cloud-init NoCloud and OpenStack):\n", cfg.ni);
    for path in INDEX {
        text.push_str(path);
        text.push('\n');
    }
    text.into_response()
}

/// `/eve/v1/network.json`.
#[derive(Serialize)]
struct NetworkJson {
    #[serde(rename = "caller-ip")]
    caller_ip: String,
    #[serde(rename = "external-ipv4")]
    external_ipv4: String,
    hostname: String,
    name: String,
}

/// `/eve/v1/app/info.json`.
#[derive(Serialize)]
struct AppInfo {
    name: String,
    app_num: u32,
    network: String,
    ip: Ipv4Addr,
    mac: String,
}

async fn eve(State(shared): State<Shared>, ConnectInfo(caller): ConnectInfo<Caller>, Path(item): Path<String>) -> Response {
    let cfg = shared.read().unwrap().clone();
    let Some(app) = app_of(&cfg, &caller) else { return not_an_app() };
    match item.as_str() {
        "network.json" => Json(NetworkJson {
            caller_ip: caller.addr.to_string(),
            external_ipv4: external_ipv4(&cfg),
            hostname: app.app.clone(),
            name: app.app,
        })
        .into_response(),
        "external_ipv4" => external_ipv4(&cfg).into_response(),
        "hostname" => app.app.into_response(),
        // EVE lists the NI's other apps here, to an app allowed to discover them
        // (allowToDiscover, which we refuse in configs): to every app, 403 as in EVE.
        "discover-network.json" => (StatusCode::FORBIDDEN, "discovering the other apps is not allowed for this app\n").into_response(),
        other => not_found(&format!("/eve/v1/{other}")),
    }
}

async fn app_info(State(shared): State<Shared>, ConnectInfo(caller): ConnectInfo<Caller>) -> Response {
    let cfg = shared.read().unwrap().clone();
    let Some(app) = app_of(&cfg, &caller) else { return not_an_app() };
    Json(AppInfo { name: app.app, app_num: app.app_num, network: cfg.ni.clone(), ip: app.ip, mac: mac_text(&app.mac) }).into_response()
}

/// cloud-init's OpenStack data source asks for the versions first.
async fn openstack_versions(State(shared): State<Shared>, ConnectInfo(caller): ConnectInfo<Caller>) -> Response {
    let cfg = shared.read().unwrap().clone();
    if app_of(&cfg, &caller).is_none() {
        return not_an_app();
    }
    "latest\n".into_response()
}

/// `/openstack/latest/meta_data.json`.
#[derive(Serialize)]
struct OpenStackMeta {
    uuid: String,
    name: String,
    hostname: String,
    launch_index: u32,
    availability_zone: String,
}

/// `/openstack/latest/network_data.json`: one link, its static IPv4 network, DNS.
#[derive(Serialize)]
struct OpenStackNetworkData {
    links: Vec<OpenStackLink>,
    networks: Vec<OpenStackNetwork>,
    services: Vec<OpenStackService>,
}

#[derive(Serialize)]
struct OpenStackLink {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    ethernet_mac_address: String,
    mtu: u32,
}

#[derive(Serialize)]
struct OpenStackNetwork {
    id: String,
    link: String,
    #[serde(rename = "type")]
    kind: &'static str,
    ip_address: Ipv4Addr,
    netmask: Ipv4Addr,
    routes: Vec<OpenStackRoute>,
}

#[derive(Serialize)]
struct OpenStackRoute {
    network: Ipv4Addr,
    netmask: Ipv4Addr,
    gateway: Ipv4Addr,
}

#[derive(Serialize)]
struct OpenStackService {
    #[serde(rename = "type")]
    kind: &'static str,
    address: Ipv4Addr,
}

async fn openstack(
    State(shared): State<Shared>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    Path((version, item)): Path<(String, String)>,
) -> Response {
    let cfg = shared.read().unwrap().clone();
    let Some(app) = app_of(&cfg, &caller) else { return not_an_app() };
    if version != "latest" {
        return not_found(&format!("/openstack/{version}/{item}"));
    }
    match item.as_str() {
        "meta_data.json" => Json(OpenStackMeta {
            uuid: format!("{}-{}", cfg.ni, app.app),
            name: app.app.clone(),
            hostname: app.app,
            launch_index: 0,
            availability_zone: cfg.ni.clone(),
        })
        .into_response(),
        "user_data" => match app.user_data {
            Some(u) => u.into_response(),
            None => not_found("/openstack/latest/user_data"),
        },
        "vendor_data.json" => Json(serde_json::Map::new()).into_response(),
        "network_data.json" => {
            let link = format!("{}-{}", cfg.ni, app.app);
            Json(OpenStackNetworkData {
                links: vec![OpenStackLink { id: link.clone(), kind: "phy", ethernet_mac_address: mac_text(&app.mac), mtu: 1500 }],
                networks: vec![OpenStackNetwork {
                    id: cfg.ni.clone(),
                    link,
                    kind: "ipv4",
                    ip_address: app.ip,
                    netmask: cfg.subnet.netmask(),
                    routes: vec![OpenStackRoute { network: Ipv4Addr::UNSPECIFIED, netmask: Ipv4Addr::UNSPECIFIED, gateway: cfg.gateway }],
                }],
                services: vec![OpenStackService { kind: "dns", address: cfg.gateway }],
            })
            .into_response()
        }
        other => not_found(&format!("/openstack/latest/{other}")),
    }
}

/// cloud-init's NoCloud (seedfrom http://169.254.169.254/) files.
async fn nocloud(State(shared): State<Shared>, ConnectInfo(caller): ConnectInfo<Caller>, Path(item): Path<String>) -> Response {
    let cfg = shared.read().unwrap().clone();
    let Some(app) = app_of(&cfg, &caller) else { return not_an_app() };
    match item.as_str() {
        "user-data" => match app.user_data {
            Some(u) => u.into_response(),
            None => not_found("/user-data"),
        },
        "meta-data" => format!("instance-id: {}\nlocal-hostname: {}\n", app.app, app.app).into_response(),
        "vendor-data" => String::new().into_response(),
        other => not_found(&format!("/{other}")),
    }
}
