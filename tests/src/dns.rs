//! A DNS server for tests: UDP and TCP on one loopback port, with records changed while it runs.
//!
//! Every answer has TTL 0 and is authoritative. Unknown names get NXDOMAIN; a known name
//! without records of the asked type gets an empty NOERROR answer. A UDP answer larger than the
//! query's EDNS payload size (512 without EDNS) is sent truncated, so resolvers retry over TCP,
//! as with a real server and a Service of hundreds of pods.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{AbortHandle, JoinSet};

/// EDNS payload size this server advertises (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// A running test DNS server; stops when dropped.
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: [AbortHandle; 2],
}

#[derive(Debug, Default)]
struct Zone {
    names: HashMap<Name, Entry>,
    queries: u64,
}

/// What one name answers.
#[derive(Debug, Default, Clone)]
struct Entry {
    ips: Vec<IpAddr>,
    srv: Vec<(u16, Name)>,
    behaviour: Behaviour,
}

#[derive(Debug, Default, Clone, Copy)]
enum Behaviour {
    #[default]
    Answer,
    Fail(ResponseCode),
    Silent,
}

impl TestDns {
    /// Starts a server on 127.0.0.1, UDP and TCP on the same port.
    pub async fn start() -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("local addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let udp_task = tokio::spawn(serve_udp(udp, zone.clone())).abort_handle();
        let tcp_task = tokio::spawn(serve_tcp(tcp, zone.clone())).abort_handle();
        Self {
            addr,
            zone,
            tasks: [udp_task, tcp_task],
        }
    }

    /// The address to give a resolver.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `name` answer A/AAAA with `ips` (an empty list: a name without addresses).
    pub fn set_a(&self, name: &str, ips: Vec<IpAddr>) {
        self.edit(name, |e| {
            e.ips = ips;
            e.behaviour = Behaviour::Answer;
        });
    }

    /// Makes `name` answer SRV with `(port, target)` records.
    pub fn set_srv(&self, name: &str, records: Vec<(u16, &str)>) {
        let records = records
            .into_iter()
            .map(|(port, target)| (port, fqdn(target)))
            .collect();
        self.edit(name, |e| {
            e.srv = records;
            e.behaviour = Behaviour::Answer;
        });
    }

    /// Makes every query for `name` fail with `code` (NXDomain, ServFail, Refused…) until its
    /// records are set again.
    pub fn set_failure(&self, name: &str, code: ResponseCode) {
        self.edit(name, |e| e.behaviour = Behaviour::Fail(code));
    }

    /// Makes `name` unanswered (the resolver times out) until its records are set again.
    pub fn set_silent(&self, name: &str) {
        self.edit(name, |e| e.behaviour = Behaviour::Silent);
    }

    /// Forgets `name`: it answers NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.lock().names.remove(&fqdn(name));
    }

    /// Queries received so far (UDP and TCP).
    pub fn queries(&self) -> u64 {
        self.lock().queries
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        f(self.lock().names.entry(fqdn(name)).or_default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `name` as a lowercase fully qualified name (the zone's key).
fn fqdn(name: &str) -> Name {
    let mut name = Name::from_str(name).expect("a DNS name").to_lowercase();
    name.set_fqdn(true);
    name
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind udp");
        let port = udp.local_addr().expect("local addr").port();
        if let Ok(tcp) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let Some(response) = answer(&zone, &request) else {
            continue;
        };
        let limit = usize::from(request.max_payload());
        let mut bytes = response.to_vec().expect("encode response");
        if bytes.len() > limit {
            bytes = response.truncate().to_vec().expect("encode truncated");
        }
        let _ = socket.send_to(&bytes, from).await;
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>) {
    // Dropped with this task when the server stops, which aborts the connections.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    conns.spawn(serve_tcp_conn(stream, zone.clone()));
                }
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Ok(request) = Message::from_vec(&buf) else {
            return;
        };
        let Some(response) = answer(&zone, &request) else {
            continue;
        };
        let bytes = response.to_vec().expect("encode response");
        let len = u16::try_from(bytes.len()).expect("a TCP DNS message fits 64 KiB");
        if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// The response to `request`, or `None` to stay silent.
fn answer(zone: &Mutex<Zone>, request: &Message) -> Option<Message> {
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return Some(response);
    };
    let qname = query.name().clone();
    let entry = {
        let mut zone = zone.lock().unwrap_or_else(PoisonError::into_inner);
        zone.queries += 1;
        zone.names.get(&qname.to_lowercase()).cloned()
    };
    let Some(entry) = entry else {
        response.metadata.response_code = ResponseCode::NXDomain;
        return Some(response);
    };
    match entry.behaviour {
        Behaviour::Silent => return None,
        Behaviour::Fail(code) => {
            response.metadata.response_code = code;
            return Some(response);
        }
        Behaviour::Answer => {}
    }
    let rdata: Vec<RData> = match query.query_type() {
        RecordType::A => entry
            .ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(RData::A(A(*v4))),
                IpAddr::V6(_) => None,
            })
            .collect(),
        RecordType::AAAA => entry
            .ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
                IpAddr::V4(_) => None,
            })
            .collect(),
        RecordType::SRV => entry
            .srv
            .iter()
            .map(|(port, target)| RData::SRV(SRV::new(0, 0, *port, target.clone())))
            .collect(),
        _ => Vec::new(),
    };
    response.add_answers(
        rdata
            .into_iter()
            .map(|data| Record::from_rdata(qname.clone(), 0, data)),
    );
    Some(response)
}
