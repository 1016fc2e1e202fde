//! Our programs on an interface: tc filters (cls_bpf, direct action) on its clsact qdisc,
//! one per direction, always at the same priority and handle (`FILTER_PRIORITY`,
//! `FILTER_HANDLE`). Attaching is one RTM_NEWTFILTER with NLM_F_CREATE and without
//! NLM_F_EXCL: it creates the filter, or puts the new program into the one that is there
//! (an earlier agent's) in place, so no packet sees the interface without a program.
//! The same on every kernel the agent supports (6.1 and 6.6+).
//!
//! Why not TCX links (6.6+), which the agent used before: every TCX attach waits for a
//! full RCU grace period under RTNL (~20 ms here, and no two overlap), and every
//! interface that carries TCX programs waits for one more per direction when it goes.
//! At 60 NIs of 4 apps that was 13 s of the apply and 10 s of `down`. A cls_bpf filter
//! waits for none (the qdisc's first filter waits for an expedited one at most): the same
//! apply takes 2.4 s, `down` 1.8 s. A filter holds its program without a pin, so it
//! outlives the agent as a pinned link did.

use std::os::fd::RawFd;

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::TcAttachType;
use netns_ebpf_common::prog_names;
use rtnetlink::{
    packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST},
    packet_route::{
        tc::{TcAttribute, TcHandle, TcMessage, TcOption},
        RouteNetlinkMessage,
    },
    packet_utils::nla::DefaultNla,
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
};
use tracing::{info, warn};

/// Where our filter sits in each direction's chain. 49152 and 1 are what the kernel
/// gives the first filter of an empty chain: where agents before this one (and `tc`
/// without `prio`) put theirs on kernels without TCX, so upgrading replaces that filter.
pub const FILTER_PRIORITY: u16 = 49152;
pub const FILTER_HANDLE: u32 = 1;

// include/uapi/linux/pkt_cls.h
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const ETH_P_ALL: u16 = 0x0003;
/// include/uapi/linux/netlink.h: the kernel's message in an extended ACK.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// An rtnetlink socket of the calling thread's netns, for requests that each get an ACK.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        socket.bind_auto().context("binding the rtnetlink socket")?;
        socket.connect(&SocketAddr::new(0, 0)).context("connecting the rtnetlink socket")?;
        // The kernel's own words on a refusal ("Filter kind and protocol must be
        // specified", ...), without our request echoed back in front of them.
        socket.set_ext_ack(true).ok();
        socket.set_cap_ack(true).ok();
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends `message` and waits for its ACK; a refusal is the errno with the kernel's
    /// message when it gave one.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<(), Refusal> {
        self.exchange(message, NLM_F_ACK | flags, |_| {})
    }

    /// Sends `message` and hands each message of the answer (whole, header included) to
    /// `each` until the ACK, or the end of a dump. Replies are read by their headers, not
    /// decoded whole: a filter of another kind whose attributes the crate cannot decode
    /// must not turn a listing into an error.
    fn exchange(&mut self, message: RouteNetlinkMessage, flags: u16, mut each: impl FnMut(&[u8])) -> Result<(), Refusal> {
        self.seq += 1;
        let mut req = NetlinkMessage::from(message);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(Refusal::io)?;
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(Refusal::io)?;
            let mut rest = &data[..];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32_at(rest, 0) as usize;
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(Refusal::io(std::io::Error::other("a truncated netlink reply")));
                }
                let (msg, kind, flags, seq) = (&rest[..len], u16_at(rest, 4), u16_at(rest, 6), u32_at(rest, 8));
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
                if seq != self.seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR if msg.len() >= NLMSG_HDRLEN + 4 => {
                        let code = u32_at(msg, NLMSG_HDRLEN) as i32;
                        if code == 0 {
                            return Ok(());
                        }
                        let message = ext_ack_message(&msg[NLMSG_HDRLEN + 4..], flags & NLM_F_CAPPED != 0);
                        return Err(Refusal { errno: -code, message });
                    }
                    _ => each(msg),
                }
            }
        }
    }

    /// The filters on one direction of interface `index` (with each priority's group
    /// entry, handle 0).
    fn filters(&mut self, index: u32, direction: TcAttachType) -> Result<Vec<Filter>, Refusal> {
        let mut dump = TcMessage::with_index(index as i32);
        dump.header.parent = parent(direction);
        let mut found = Vec::new();
        self.exchange(RouteNetlinkMessage::GetTrafficFilter(dump), NLM_F_DUMP, |m| found.extend(Filter::parse(m)))?;
        Ok(found)
    }

    /// The kind of interface `index`'s ingress-side qdisc (clsact or ingress), if any.
    fn ingress_qdisc(&mut self, index: u32) -> Result<Option<String>, Refusal> {
        let mut kind = None;
        let want = u32::from(CLSACT_HANDLE);
        self.exchange(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()), NLM_F_DUMP, |m| {
            if m.len() >= TCMSG_END && u32_at(m, NLMSG_HDRLEN + 4) == index && u32_at(m, NLMSG_HDRLEN + 8) == want {
                kind = nla(&m[TCMSG_END..], TCA_KIND).map(c_string);
            }
        })?;
        Ok(kind)
    }

    fn delete_filter(&mut self, index: u32, direction: TcAttachType, f: &Filter) -> Result<(), Refusal> {
        let mut msg = filter_message(index, direction);
        msg.header.handle = f.handle.into();
        msg.header.info = (u32::from(f.priority) << 16) | u32::from(ETH_P_ALL.to_be());
        match self.request(RouteNetlinkMessage::DelTrafficFilter(msg), 0) {
            // Gone already (with its interface, say).
            Err(r) if [nix::libc::ENOENT, nix::libc::ENODEV].contains(&r.errno) => Ok(()),
            other => other,
        }
    }
}

// include/uapi/linux/netlink.h and rtnetlink.h: the fixed headers replies are read by.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Where a tcmsg's attributes start: nlmsghdr, then family/pad (4), ifindex, handle,
/// parent, info (4 each).
const TCMSG_END: usize = NLMSG_HDRLEN + 20;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The value of attribute `kind` in a run of netlink attributes.
fn nla(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0) as usize;
        if len < 4 || len > attrs.len() {
            return None;
        }
        // Without the NESTED and byte-order flags.
        if u16_at(attrs, 2) & 0x3fff == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

fn c_string(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

/// A tc filter as a dump lists it.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    priority: u16,
    handle: u32,
    kind: Option<String>,
    /// A bpf filter's TCA_BPF_NAME: its program's name.
    bpf_name: Option<String>,
}

impl Filter {
    fn parse(msg: &[u8]) -> Option<Filter> {
        if msg.len() < TCMSG_END {
            return None;
        }
        let attrs = &msg[TCMSG_END..];
        let kind = nla(attrs, TCA_KIND).map(c_string);
        let bpf_name = match kind.as_deref() {
            Some("bpf") => nla(attrs, TCA_OPTIONS).and_then(|o| nla(o, TCA_BPF_NAME)).map(c_string),
            _ => None,
        };
        Some(Filter { priority: (u32_at(msg, NLMSG_HDRLEN + 16) >> 16) as u16, handle: u32_at(msg, NLMSG_HDRLEN + 8), kind, bpf_name })
    }

    /// A priority's group entry, not a filter.
    fn is_group(&self) -> bool {
        self.handle == 0
    }

    /// One of our programs (by name: this agent's or an earlier one's).
    fn is_ours(&self) -> bool {
        self.kind.as_deref() == Some("bpf") && self.bpf_name.as_deref().is_some_and(|n| OUR_PROGRAMS.contains(&n))
    }

    fn in_our_slot(&self) -> bool {
        self.priority == FILTER_PRIORITY && self.handle == FILTER_HANDLE
    }
}

const OUR_PROGRAMS: [&str; 4] =
    [prog_names::APP_PORT_FROM_APP, prog_names::APP_PORT_TO_APP, prog_names::NAT_INGRESS, prog_names::NAT_EGRESS];

/// The kernel refused a request (or the socket failed: `errno` from the io error).
#[derive(Debug)]
struct Refusal {
    errno: i32,
    message: Option<String>,
}

impl Refusal {
    fn io(e: std::io::Error) -> Refusal {
        Refusal { errno: e.raw_os_error().unwrap_or(0), message: Some(e.to_string()) }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

/// NLMSGERR_ATTR_MSG from an error's payload after its code: the request's header (16
/// bytes; its body too unless the kernel capped it), then attributes.
fn ext_ack_message(payload: &[u8], capped: bool) -> Option<String> {
    if !capped || payload.len() < NLMSG_HDRLEN {
        return None;
    }
    nla(&payload[NLMSG_HDRLEN..], NLMSGERR_ATTR_MSG).map(c_string)
}

/// The clsact qdisc's own handle (ffff:0).
const CLSACT_HANDLE: TcHandle = TcHandle { major: TcHandle::CLSACT.major, minor: 0 };

fn parent(direction: TcAttachType) -> TcHandle {
    match direction {
        TcAttachType::Ingress => TcHandle { major: TcHandle::CLSACT.major, minor: TcHandle::MIN_INGRESS },
        TcAttachType::Egress => TcHandle { major: TcHandle::CLSACT.major, minor: TcHandle::MIN_EGRESS },
        TcAttachType::Custom(p) => p.into(),
    }
}

fn filter_message(ifindex: u32, direction: TcAttachType) -> TcMessage {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = parent(direction);
    msg.header.handle = FILTER_HANDLE.into();
    // tcm_info: priority above, protocol (network order) below.
    msg.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg
}

fn clsact_message(ifindex: u32) -> TcMessage {
    let mut qdisc = TcMessage::with_index(ifindex as i32);
    qdisc.header.parent = TcHandle::CLSACT;
    qdisc.header.handle = CLSACT_HANDLE;
    qdisc.attributes.push(TcAttribute::Kind("clsact".into()));
    qdisc
}

fn ifindex(ifname: &str) -> Result<Option<u32>> {
    match nix::net::if_::if_nametoindex(ifname) {
        Ok(i) => Ok(Some(i)),
        Err(nix::errno::Errno::ENODEV) => Ok(None),
        Err(e) => Err(anyhow!("looking up interface {ifname}: {e}")),
    }
}

/// Puts each `(program fd, its name, direction)` on interface `ifname` of the calling
/// thread's netns: the clsact qdisc added where it is missing, then our filter created or
/// its program replaced.
///
/// Our priority holding someone else's filter (a filter added without a priority on an
/// empty chain gets the same one) is an error, not something to overwrite. Our programs in other slots
/// are an earlier agent's (one that let the kernel choose, on a busy chain): they go once
/// ours is written, and until then the one that runs first decides, whole.
///
/// A clsact qdisc this call added goes again, with whatever it put on it, when a later
/// step fails: a failed attach leaves the interface as it found it.
pub fn attach(ifname: &str, programs: &[(RawFd, &str, TcAttachType)]) -> Result<()> {
    let index = ifindex(ifname)?.with_context(|| format!("interface {ifname} does not exist"))?;
    let mut rtnl = Rtnl::open()?;
    let added_qdisc = add_clsact(&mut rtnl, ifname, index)?;
    let attached = attach_filters(&mut rtnl, ifname, index, programs);
    if attached.is_err() && added_qdisc {
        if let Err(r) = rtnl.request(RouteNetlinkMessage::DelQueueDiscipline(clsact_message(index)), 0) {
            warn!("{ifname}: removing the clsact qdisc of a failed attach: {r}");
        }
    }
    attached
}

/// Adds the clsact qdisc to interface `index` where it is missing; whether it was.
fn add_clsact(rtnl: &mut Rtnl, ifname: &str, index: u32) -> Result<bool> {
    match rtnl.request(RouteNetlinkMessage::NewQueueDiscipline(clsact_message(index)), NLM_F_CREATE | NLM_F_EXCL) {
        Ok(()) => Ok(true),
        Err(r) if r.errno == nix::libc::EEXIST => {
            // An `ingress` qdisc answers for egress too: our egress program would run on
            // the way in.
            match rtnl.ingress_qdisc(index).map_err(|r| anyhow!("listing the qdiscs of {ifname}: {r}"))? {
                Some(kind) if kind == "clsact" => Ok(false),
                other => bail!(
                    "{ifname} has {} where the programs need a clsact qdisc (`tc qdisc del dev {ifname} ingress` would free its place)",
                    other.map(|k| format!("an {k} qdisc")).unwrap_or_else(|| "another qdisc".into())
                ),
            }
        }
        Err(r) => bail!("adding the clsact qdisc to {ifname}: {r}"),
    }
}

/// `attach`'s filters, on interface `index`'s clsact qdisc.
fn attach_filters(rtnl: &mut Rtnl, ifname: &str, index: u32, programs: &[(RawFd, &str, TcAttachType)]) -> Result<()> {
    for &(fd, name, direction) in programs {
        let present = rtnl.filters(index, direction).map_err(|r| anyhow!("listing the {direction:?} filters of {ifname}: {r}"))?;
        if let Some(f) = present.iter().find(|f| f.priority == FILTER_PRIORITY && !f.is_group() && !f.is_ours()) {
            bail!(
                "{ifname} ({direction:?}): priority {FILTER_PRIORITY} holds someone else's filter ({} {}handle {:#x}); not replacing it",
                f.kind.as_deref().unwrap_or("?"),
                f.bpf_name.as_deref().map(|n| format!("{n}, ")).unwrap_or_default(),
                f.handle
            );
        }
        let mut msg = filter_message(index, direction);
        let mut name_z = name.as_bytes().to_vec();
        name_z.push(0);
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Other(DefaultNla::new(TCA_BPF_FD, (fd as u32).to_ne_bytes().to_vec())),
            TcOption::Other(DefaultNla::new(TCA_BPF_NAME, name_z)),
            TcOption::Other(DefaultNla::new(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes().to_vec())),
        ]));
        rtnl.request(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE)
            .map_err(|r| anyhow!("attaching {name} to {ifname} ({direction:?}): {r}"))?;
        for f in present.iter().filter(|f| f.is_ours() && !f.in_our_slot()) {
            rtnl.delete_filter(index, direction, f)
                .map_err(|r| anyhow!("removing an earlier agent's filter from {ifname} ({direction:?}, priority {}): {r}", f.priority))?;
            info!("{ifname} ({direction:?}): an earlier agent's filter at priority {} handle {} removed", f.priority, f.handle);
        }
    }
    Ok(())
}

/// Removes our filters (this agent's programs, wherever they sit) from `ifname` (calling
/// thread's netns), and the clsact qdisc once no filter of anyone's is left on it;
/// whether one of ours was there. A missing interface or filter is not an error.
pub fn detach(ifname: &str) -> Result<bool> {
    let Some(index) = ifindex(ifname)? else { return Ok(false) };
    let mut rtnl = Rtnl::open()?;
    let mut ours = false;
    let mut others = 0;
    for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
        let present = match rtnl.filters(index, direction) {
            Ok(p) => p,
            Err(r) if r.errno == nix::libc::ENODEV => return Ok(ours),
            Err(r) => bail!("listing the {direction:?} filters of {ifname}: {r}"),
        };
        for f in present.iter().filter(|f| !f.is_group()) {
            if f.is_ours() {
                rtnl.delete_filter(index, direction, f).map_err(|r| anyhow!("detaching our {direction:?} filter from {ifname}: {r}"))?;
                ours = true;
            } else {
                others += 1;
            }
        }
    }
    if others == 0 {
        match rtnl.request(RouteNetlinkMessage::DelQueueDiscipline(clsact_message(index)), 0) {
            // No qdisc (ENOENT, EINVAL) or no interface any more.
            Err(r) if ![nix::libc::ENOENT, nix::libc::EINVAL, nix::libc::ENODEV].contains(&r.errno) => {
                bail!("removing the clsact qdisc of {ifname}: {r}")
            }
            _ => {}
        }
    }
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netns of this test's own (`ip netns add`), deleted when dropped.
    struct ScratchNetns(String);

    impl Drop for ScratchNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// A refused filter (no program behind its fd) on an interface (a veth) without a clsact
    /// qdisc: the error says so, and the qdisc the attach added is gone again. (Root: it
    /// makes a netns and a veth pair of its own.)
    #[test]
    fn a_failed_attach_leaves_no_qdisc_behind() {
        let ns = ScratchNetns(format!("tc-attach-test-{}", std::process::id()));
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        assert!(ip(&["netns", "add", &ns.0]), "ip netns add {} (root)", ns.0);
        assert!(ip(&["-n", &ns.0, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"]));
        let netns = crate::netns::Netns::open(&crate::netns::resolve(&ns.0)).unwrap();
        let not_a_program = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&not_a_program);
        let err = crate::netns::run_in(&netns, || attach("veth0", &[(fd, "app_port_from_app", TcAttachType::Ingress)]))
            .expect_err("a filter without a program is refused");
        assert!(format!("{err:#}").contains("attaching app_port_from_app to veth0"), "{err:#}");
        let qdiscs = std::process::Command::new("tc").args(["-n", &ns.0, "qdisc", "show", "dev", "veth0"]).output().unwrap();
        let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
        assert!(!qdiscs.contains("clsact"), "the failed attach left its qdisc: {qdiscs}");
    }

    #[test]
    fn the_kernels_message_is_read_from_a_capped_ack() {
        let mut payload = vec![0u8; 16];
        let text = b"Filter kind and protocol must be specified\0";
        let len = (4 + text.len()) as u16;
        payload.extend(len.to_ne_bytes());
        payload.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend(text);
        payload.resize(payload.len().next_multiple_of(4), 0);
        assert_eq!(ext_ack_message(&payload, true).as_deref(), Some("Filter kind and protocol must be specified"));
        assert_eq!(ext_ack_message(&payload, false), None, "uncapped: the request's body comes first");
        assert_eq!(ext_ack_message(&payload[..10], true), None);
    }

    #[test]
    fn the_filter_sits_at_our_priority_for_every_protocol() {
        let msg = filter_message(7, TcAttachType::Egress);
        assert_eq!(msg.header.info >> 16, 49152);
        assert_eq!(msg.header.info & 0xffff, 0x0300, "ETH_P_ALL in network order");
        assert_eq!(u32::from(msg.header.parent), 0xffff_fff3);
        assert_eq!(u32::from(parent(TcAttachType::Ingress)), 0xffff_fff2);
    }

    /// A filter message as the kernel would list it, built by the crate that builds
    /// our requests.
    fn listed(priority: u16, handle: u32, kind: &str, bpf_name: Option<&str>) -> Vec<u8> {
        let mut msg = filter_message(3, TcAttachType::Ingress);
        msg.header.handle = handle.into();
        msg.header.info = (u32::from(priority) << 16) | 0x0300;
        msg.attributes = vec![TcAttribute::Kind(kind.into())];
        if let Some(name) = bpf_name {
            let mut z = name.as_bytes().to_vec();
            z.push(0);
            msg.attributes.push(TcAttribute::Options(vec![
                TcOption::Other(DefaultNla::new(TCA_BPF_FD, 9u32.to_ne_bytes().to_vec())),
                TcOption::Other(DefaultNla::new(TCA_BPF_NAME, z)),
            ]));
        }
        let mut m = NetlinkMessage::from(RouteNetlinkMessage::NewTrafficFilter(msg));
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    #[test]
    fn listed_filters_say_whose_they_are_and_where_they_sit() {
        let ours = Filter::parse(&listed(49152, 1, "bpf", Some(prog_names::NAT_EGRESS))).unwrap();
        assert_eq!((ours.priority, ours.handle, ours.bpf_name.as_deref()), (49152, 1, Some(prog_names::NAT_EGRESS)));
        assert!(ours.is_ours() && ours.in_our_slot() && !ours.is_group());

        let earlier = Filter::parse(&listed(49151, 1, "bpf", Some(prog_names::APP_PORT_FROM_APP))).unwrap();
        assert!(earlier.is_ours() && !earlier.in_our_slot(), "an earlier agent's, elsewhere: {earlier:?}");

        let someone = Filter::parse(&listed(49152, 1, "bpf", Some("their_prog"))).unwrap();
        assert!(!someone.is_ours() && someone.in_our_slot(), "someone else's bpf filter in our slot: {someone:?}");

        let u32_filter = Filter::parse(&listed(49152, 0x800, "u32", None)).unwrap();
        assert!(!u32_filter.is_ours() && u32_filter.bpf_name.is_none());

        let group = Filter::parse(&listed(49152, 0, "bpf", None)).unwrap();
        assert!(group.is_group() && !group.is_ours());

        assert_eq!(Filter::parse(&listed(1, 1, "bpf", None)[..20]), None, "too short for a tcmsg");
    }
}
