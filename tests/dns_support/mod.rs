//! Shared harness for the DNS tests: the server on 127.0.0.1 ports chosen by the kernel, a
//! recording name policy, a fake upstream resolver that records what it receives, and
//! small UDP/TCP DNS clients. Nothing here talks to anything but loopback.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use paude_proxy::dns::{
    AnswerRecord, DnsConfig, DnsServer, DnsStats, NamePolicy, RateLimit, Upstream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;

/// Only to fail a test instead of hanging it; never part of an assertion.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Allows `allowed.test` and its subdomains; records every `blocked` call.
#[derive(Default)]
pub struct TestPolicy {
    pub blocked: Mutex<Vec<(IpAddr, String)>>,
}

impl NamePolicy for TestPolicy {
    fn allows(&self, _client: IpAddr, name: &str) -> bool {
        name == "allowed.test" || name.ends_with(".allowed.test")
    }
    fn blocked(&self, client: IpAddr, name: &str) {
        self.blocked.lock().unwrap().push((client, name.to_owned()));
    }
}

impl TestPolicy {
    pub fn blocked_names(&self) -> Vec<String> {
        self.blocked
            .lock()
            .unwrap()
            .iter()
            .map(|(_, name)| name.clone())
            .collect()
    }
}

pub struct Harness {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub policy: Arc<TestPolicy>,
    pub record: Arc<AnswerRecord>,
    pub stats: Arc<DnsStats>,
    pub cfg: DnsConfig,
    _hosts: tempfile::NamedTempFile,
    _stop: oneshot::Sender<()>,
}

pub const HOSTS: &str = "\
192.0.2.10   api.allowed.test
2001:db8::10 api.allowed.test
192.0.2.20   v4only.allowed.test
192.0.2.99   pinned.blocked.test
";

/// Test defaults: hosts file above, the given upstream servers, a rate limit far above what
/// any test sends.
pub fn test_config(upstream: Vec<SocketAddr>) -> DnsConfig {
    DnsConfig {
        upstream: Upstream::Servers(upstream),
        rate: RateLimit {
            per_second: 10_000,
            burst: 10_000,
            max_clients: 64,
        },
        ..DnsConfig::default()
    }
}

pub async fn start(mut cfg: DnsConfig) -> Harness {
    let hosts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(hosts.path(), HOSTS).unwrap();
    cfg.hosts_file = Some(hosts.path().to_owned());

    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let policy = Arc::new(TestPolicy::default());
    let record = Arc::new(AnswerRecord::new(cfg.record_capacity, cfg.grace));
    let server = DnsServer::new(cfg.clone(), policy.clone(), record.clone()).unwrap();
    let stats = server.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .serve(udp, tcp, stopped)
            .await
            .expect("DNS server failed");
    });
    Harness {
        udp: udp_addr,
        tcp: tcp_addr,
        policy,
        record,
        stats,
        cfg,
        _hosts: hosts,
        _stop: stop,
    }
}

pub fn query_bytes(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    query_message(id, name, qtype).to_vec().unwrap()
}

pub fn query_message(id: u16, name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message
}

/// One query over UDP from a fresh socket bound to `from`, one reply.
pub async fn udp_query_from(from: &str, server: SocketAddr, packet: &[u8]) -> Message {
    let socket = UdpSocket::bind(from).await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    udp_recv(&socket).await
}

pub async fn udp_query(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let id = rand_id();
    let reply = udp_query_from("127.0.0.1:0", server, &query_bytes(id, name, qtype)).await;
    assert_eq!(reply.metadata.id, id, "reply id matches query id");
    reply
}

pub async fn udp_recv(socket: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 65_535];
    let len = tokio::time::timeout(CLIENT_TIMEOUT, socket.recv(&mut buf))
        .await
        .expect("no DNS reply")
        .unwrap();
    Message::from_vec(&buf[..len]).expect("reply parses")
}

pub async fn tcp_send(stream: &mut TcpStream, packet: &[u8]) {
    let len = u16::try_from(packet.len()).unwrap();
    stream.write_all(&len.to_be_bytes()).await.unwrap();
    stream.write_all(packet).await.unwrap();
}

pub async fn tcp_recv(stream: &mut TcpStream) -> Message {
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(CLIENT_TIMEOUT, read)
        .await
        .expect("no DNS reply over TCP");
    Message::from_vec(&buf).expect("reply parses")
}

pub fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// (address, ttl) of the address records in a reply.
pub fn addrs(reply: &Message) -> Vec<(IpAddr, u32)> {
    reply
        .answers
        .iter()
        .filter_map(|record| record.data.ip_addr().map(|ip| (ip, record.ttl)))
        .collect()
}

/// Waits until `done(stats)` holds; the timeout only turns a hang into a failure.
pub async fn wait_for(stats: &DnsStats, done: impl Fn(&paude_proxy::dns::DnsCounters) -> bool) {
    let waited = tokio::time::timeout(CLIENT_TIMEOUT, async {
        while !done(&stats.snapshot()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "counters never reached the expected state: {:?}",
        stats.snapshot()
    );
}

/// A fake upstream resolver on 127.0.0.1 (UDP). It answers from a fixed table, NXDOMAIN
/// for everything else, and records every question it receives.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<(String, RecordType)>>>,
}

impl FakeUpstream {
    pub async fn start(table: HashMap<(String, RecordType), Vec<Record>>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(request) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let Some(query) = request.queries.first().cloned() else {
                    continue;
                };
                let name = query
                    .name()
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                log.lock().unwrap().push((name.clone(), query.query_type()));
                let mut reply = Message::response(request.metadata.id, OpCode::Query);
                reply.metadata = Metadata::response_from_request(&request.metadata);
                reply.metadata.recursion_available = true;
                reply.add_query(query.clone());
                match table.get(&(name, query.query_type())) {
                    Some(records) => {
                        reply.add_answers(records.iter().cloned());
                    }
                    None => reply.metadata.response_code = ResponseCode::NXDomain,
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
            }
        });
        Self { addr, seen }
    }

    pub fn seen_names(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }
}

pub fn a_record(name: &str, ttl: u32, ip: &str) -> Record {
    let ip: IpAddr = ip.parse().unwrap();
    Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, RData::from(ip))
}

pub fn cname_record(name: &str, ttl: u32, target: &str) -> Record {
    let target = Name::from_ascii(target).unwrap();
    Record::from_rdata(
        Name::from_ascii(name).unwrap(),
        ttl,
        RData::CNAME(hickory_proto::rr::rdata::CNAME(target)),
    )
}
