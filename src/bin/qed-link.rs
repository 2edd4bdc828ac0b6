//! qed-link: a user-space link emulator for tests and `make bench-edge`.
//!
//! It relays UDP (qed's QUIC peer traffic) and TCP (etcd's peer traffic)
//! between a listening address and a target, through a WAN link emulated
//! per direction by [`qed::link::Link`]: delay, jitter, loss, reordering,
//! duplication, a rate cap and a bounded queue. Members are wired through it
//! by advertising the relay's address as their peer URL while listening on
//! the target (`--initial-cluster` and `--initial-advertise-peer-urls` name
//! the relay, `--listen-peer-urls` the real port); every packet to a member
//! then crosses one relay, so a round trip between two members costs the
//! forward plus the backward delay.
//!
//! UDP: each source address gets its own upstream socket (at most
//! [`MAX_SESSIONS`]), so replies find their way back; datagrams wait in one
//! timed queue and a single sender thread releases them. TCP: each accepted
//! connection gets a connection to the target (at most [`MAX_CONNECTIONS`])
//! and, per direction, a reader and a writer thread joined by a bounded
//! channel (a full channel stops the reader: TCP's own back-pressure). Socket
//! errors end a session or a connection, never the relay. Counts are printed
//! to stderr every `--stats-every`. The process runs until it is killed.

use clap::Parser;
use qed::link::{Carriage, Decision, Link, LinkSpec, LinkStats};
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// UDP source addresses relayed at once per listener (beyond: dropped).
const MAX_SESSIONS: usize = 1024;
/// TCP connections relayed at once per listener (beyond: closed at once).
const MAX_CONNECTIONS: usize = 256;
/// Largest datagram relayed, and the size a TCP read is taken in.
const BUFFER: usize = 64 * 1024;
/// Chunks a TCP direction holds before its reader waits (≤ 4 MiB).
const STREAM_QUEUE: usize = 64;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A user-space WAN link emulator: UDP and TCP relays with delay, jitter, loss, reordering, duplication and a rate cap"
)]
struct Flags {
    /// A UDP relay, LISTEN=TARGET (e.g. 127.0.0.1:12390=127.0.0.1:12380); repeatable.
    #[arg(long)]
    udp: Vec<String>,
    /// A TCP relay, LISTEN=TARGET; repeatable.
    #[arg(long)]
    tcp: Vec<String>,
    /// Both directions: delay=25ms,jitter=2ms,loss=5%,reorder=1%,
    /// reorder-gap=10ms,dup=0.1%,rate=100mbit,queue=4mb [default: a
    /// perfect link].
    #[arg(long, default_value = "")]
    link: String,
    /// Toward the target only (on top of --link).
    #[arg(long, default_value = "")]
    forward: String,
    /// Back from the target only (on top of --link).
    #[arg(long, default_value = "")]
    backward: String,
    /// TCP: the time a lost segment costs (doubling per lost
    /// retransmission) [default: twice the round trip, at least 10 ms, as
    /// Linux's tail-loss probe; congestion-window cuts are not modelled].
    #[arg(long)]
    rto: Option<String>,
    /// Seed of every link's random stream (each relay and direction derives
    /// its own from it): the same seed draws the same losses.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds between count reports on stderr; 0: none.
    #[arg(long, default_value_t = 5.0)]
    stats_every: f64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One direction's link, shared by the threads that offer and send.
type SharedLink = Arc<Mutex<Link>>;

/// Every link, named, for the count reports; a TCP connection's links are
/// folded into their relay's closed totals when it ends.
#[derive(Default)]
struct Registry {
    live: Mutex<Vec<(String, SharedLink)>>,
    closed: Mutex<HashMap<String, LinkStats>>,
}

impl Registry {
    fn add(&self, name: String, link: &SharedLink) {
        lock(&self.live).push((name, link.clone()));
    }

    /// Totals per name (live and ended links), sorted.
    fn totals(&self) -> Vec<(String, LinkStats)> {
        let mut totals = lock(&self.closed).clone();
        let mut live = lock(&self.live);
        live.retain(|(name, link)| {
            let stats = lock(link).stats();
            if Arc::strong_count(link) == 1 {
                add_stats(totals.entry(name.clone()).or_default(), &stats);
                add_stats(lock(&self.closed).entry(name.clone()).or_default(), &stats);
                false
            } else {
                add_stats(totals.entry(name.clone()).or_default(), &stats);
                true
            }
        });
        let mut totals: Vec<_> = totals.into_iter().collect();
        totals.sort_by(|a, b| a.0.cmp(&b.0));
        totals
    }
}

fn add_stats(into: &mut LinkStats, s: &LinkStats) {
    into.offered += s.offered;
    into.released += s.released;
    into.lost += s.lost;
    into.queue_full += s.queue_full;
    into.reordered += s.reordered;
    into.duplicated += s.duplicated;
    into.retransmitted += s.retransmitted;
}

/// A datagram waiting for its time.
struct Timed {
    at: Duration,
    seq: u64,
    socket: Arc<UdpSocket>,
    /// `None`: the socket is connected to its peer.
    to: Option<SocketAddr>,
    data: Vec<u8>,
    link: SharedLink,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The timed queue of every UDP relay, and its sender thread's wake-up.
struct Scheduler {
    start: Instant,
    queue: Mutex<BinaryHeap<Timed>>,
    wake: Condvar,
    seq: AtomicU64,
    send_errors: AtomicU64,
}

impl Scheduler {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Offers `data` to `link` and queues the copies it releases.
    fn offer(
        &self,
        link: &SharedLink,
        socket: &Arc<UdpSocket>,
        to: Option<SocketAddr>,
        data: &[u8],
    ) {
        let decision = lock(link).offer(self.now(), data.len());
        let Decision::Release(times) = decision else {
            return;
        };
        let mut queue = lock(&self.queue);
        for at in times {
            queue.push(Timed {
                at,
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
                socket: socket.clone(),
                to,
                data: data.to_vec(),
                link: link.clone(),
            });
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// The sender: releases each datagram at its time.
    fn run(&self) {
        loop {
            let mut queue = lock(&self.queue);
            let due = loop {
                let now = self.now();
                match queue.peek() {
                    Some(top) if top.at <= now => break queue.pop(),
                    Some(top) => {
                        let wait = top.at - now;
                        queue = self
                            .wake
                            .wait_timeout(queue, wait)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    None => {
                        queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                    }
                }
            };
            drop(queue);
            let Some(item) = due else { continue };
            let sent = match item.to {
                Some(to) => item.socket.send_to(&item.data, to),
                None => item.socket.send(&item.data),
            };
            if sent.is_err() {
                self.send_errors.fetch_add(1, Ordering::Relaxed);
            }
            lock(&item.link).sent(item.data.len());
        }
    }
}

/// `LISTEN=TARGET`.
fn parse_pair(text: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (listen, target) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected LISTEN=TARGET"))?;
    let addr = |a: &str| {
        a.trim()
            .parse::<SocketAddr>()
            .map_err(|e| format!("`{a}`: {e}"))
    };
    Ok((addr(listen)?, addr(target)?))
}

/// An unbound local address of `target`'s family.
fn any_local(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 0)),
    }
}

/// Seed of relay `relay`'s direction `dir` (and TCP connection `conn`).
fn derive_seed(seed: u64, relay: usize, conn: u64, dir: u64) -> u64 {
    seed ^ ((relay as u64 + 1) << 48) ^ (conn << 8) ^ dir
}

/// One UDP relay: reads datagrams from sources, forwards each through its
/// session's upstream socket; replies come back through the listener.
fn run_udp(
    listener: UdpSocket,
    target: SocketAddr,
    forward: SharedLink,
    backward: SharedLink,
    scheduler: Arc<Scheduler>,
) {
    let listener = Arc::new(listener);
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let (n, from) = match listener.recv_from(&mut buf) {
            Ok(got) => got,
            // e.g. ICMP port unreachable reported on the socket: not fatal.
            Err(_) => continue,
        };
        let upstream = match sessions.get(&from) {
            Some(s) => s.clone(),
            None if sessions.len() >= MAX_SESSIONS => continue,
            None => {
                let Ok(socket) = UdpSocket::bind(any_local(target)) else {
                    continue;
                };
                if socket.connect(target).is_err() {
                    continue;
                }
                let socket = Arc::new(socket);
                sessions.insert(from, socket.clone());
                let (up, back, listener, scheduler) = (
                    socket.clone(),
                    backward.clone(),
                    listener.clone(),
                    scheduler.clone(),
                );
                thread::spawn(move || {
                    let mut buf = vec![0u8; BUFFER];
                    loop {
                        match up.recv(&mut buf) {
                            Ok(n) => scheduler.offer(&back, &listener, Some(from), &buf[..n]),
                            Err(_) => thread::sleep(Duration::from_millis(1)),
                        }
                    }
                });
                socket
            }
        };
        scheduler.offer(&forward, &upstream, None, &buf[..n]);
    }
}

/// The TCP side of one relay.
struct TcpRelay {
    index: usize,
    target: SocketAddr,
    forward: LinkSpec,
    backward: LinkSpec,
    rto: Duration,
    seed: u64,
    start: Instant,
    registry: Arc<Registry>,
    open: AtomicUsize,
}

impl TcpRelay {
    fn run(self: Arc<Self>, listener: TcpListener) {
        let mut conn = 0u64;
        for accepted in listener.incoming() {
            let Ok(client) = accepted else { continue };
            if self.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                continue; // dropped: closed
            }
            conn += 1;
            self.open.fetch_add(1, Ordering::Relaxed);
            let relay = self.clone();
            thread::spawn(move || {
                relay.connection(client, conn);
                relay.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    fn connection(&self, client: TcpStream, conn: u64) {
        let Ok(server) = TcpStream::connect_timeout(&self.target, Duration::from_secs(5)) else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let link = |spec: &LinkSpec, dir| {
            let carriage = Carriage::Stream { rto: self.rto };
            let seed = derive_seed(self.seed, self.index, conn, dir);
            Arc::new(Mutex::new(Link::new(spec.clone(), carriage, seed)))
        };
        let (forward, backward) = (link(&self.forward, 1), link(&self.backward, 2));
        let name = format!("tcp{} {}", self.index, self.target);
        self.registry.add(format!("{name} forward"), &forward);
        self.registry.add(format!("{name} backward"), &backward);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        let start = self.start;
        let up = thread::spawn(move || pump(client, server, &forward, start));
        pump(server2, client2, &backward, start);
        let _ = up.join();
    }
}

/// Copies `from` to `to` through `link`: a reader thread stamps each chunk
/// with its release time, this thread writes it then. Either side ending
/// (or failing) shuts both down.
fn pump(from: TcpStream, to: TcpStream, link: &SharedLink, start: Instant) {
    let (tx, rx) = mpsc::sync_channel::<(Duration, Vec<u8>)>(STREAM_QUEUE);
    let (Ok(reader_end), Ok(writer_end)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let reader_link = link.clone();
    let reader = thread::spawn(move || {
        let mut from = reader_end;
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let decision = lock(&reader_link).offer(start.elapsed(), n);
            // Streams are never dropped; a drop would be a bug in the core.
            let Decision::Release(times) = decision else {
                break;
            };
            let at = times.first().copied().unwrap_or_default();
            if tx.send((at, buf[..n].to_vec())).is_err() {
                break;
            }
        }
        // Dropping `tx` tells the writer the stream ended.
    });
    let mut to_writer = writer_end;
    while let Ok((at, data)) = rx.recv() {
        let now = start.elapsed();
        if at > now {
            thread::sleep(at - now);
        }
        let ok = to_writer.write_all(&data).is_ok();
        lock(link).sent(data.len());
        if !ok {
            break;
        }
    }
    // Half-close forward; a failed write ends the whole connection.
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
    drop(rx);
    let _ = reader.join();
}

fn parse_time(text: &str) -> Result<Duration, String> {
    LinkSpec::default()
        .parse_onto(&format!("delay={text}"))
        .map(|s| s.delay)
        .map_err(|e| e.to_string())
}

fn main() {
    let flags = Flags::parse();
    if let Err(e) = run(flags) {
        eprintln!("qed-link: {e}");
        std::process::exit(2);
    }
}

fn run(flags: Flags) -> Result<(), String> {
    let common = LinkSpec::default()
        .parse_onto(&flags.link)
        .map_err(|e| e.to_string())?;
    let forward = common
        .parse_onto(&flags.forward)
        .map_err(|e| e.to_string())?;
    let backward = common
        .parse_onto(&flags.backward)
        .map_err(|e| e.to_string())?;
    let rto = match flags.rto.as_deref() {
        None | Some("auto") => {
            ((forward.delay + backward.delay) * 2).max(Duration::from_millis(10))
        }
        Some(t) => parse_time(t)?,
    };
    if flags.udp.is_empty() && flags.tcp.is_empty() {
        return Err("nothing to relay: give --udp or --tcp LISTEN=TARGET".into());
    }
    let scheduler = Arc::new(Scheduler {
        start: Instant::now(),
        queue: Mutex::new(BinaryHeap::new()),
        wake: Condvar::new(),
        seq: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
    });
    let registry = Arc::new(Registry::default());
    // Bind everything first: a bad address fails the start, not later.
    let mut udp = Vec::new();
    for (index, pair) in flags.udp.iter().enumerate() {
        let (listen, target) = parse_pair(pair)?;
        let socket = UdpSocket::bind(listen).map_err(|e| format!("udp {listen}: {e}"))?;
        udp.push((index, socket, target));
    }
    let mut tcp = Vec::new();
    for (index, pair) in flags.tcp.iter().enumerate() {
        let (listen, target) = parse_pair(pair)?;
        let listener = TcpListener::bind(listen).map_err(|e| format!("tcp {listen}: {e}"))?;
        tcp.push((index, listener, target));
    }
    eprintln!(
        "qed-link: forward {forward:?}, backward {backward:?}, tcp rto {rto:?}, seed {}",
        flags.seed
    );
    for (index, socket, target) in udp {
        let link = |spec: &LinkSpec, dir| {
            let seed = derive_seed(flags.seed, index, 0, dir);
            Arc::new(Mutex::new(Link::new(
                spec.clone(),
                Carriage::Datagram,
                seed,
            )))
        };
        let (f, b) = (link(&forward, 1), link(&backward, 2));
        registry.add(format!("udp{index} {target} forward"), &f);
        registry.add(format!("udp{index} {target} backward"), &b);
        let scheduler = scheduler.clone();
        thread::spawn(move || run_udp(socket, target, f, b, scheduler));
    }
    for (index, listener, target) in tcp {
        let relay = Arc::new(TcpRelay {
            index,
            target,
            forward: forward.clone(),
            backward: backward.clone(),
            rto,
            seed: flags.seed,
            start: scheduler.start,
            registry: registry.clone(),
            open: AtomicUsize::new(0),
        });
        thread::spawn(move || relay.run(listener));
    }
    {
        let scheduler = scheduler.clone();
        thread::spawn(move || scheduler.run());
    }
    let every = Duration::from_secs_f64(flags.stats_every.clamp(0.0, 86_400.0));
    loop {
        if every.is_zero() {
            thread::park();
            continue;
        }
        thread::sleep(every);
        for (name, s) in registry.totals() {
            eprintln!(
                "qed-link: {name}: offered={} released={} lost={} queue_full={} reordered={} duplicated={} retransmitted={}",
                s.offered, s.released, s.lost, s.queue_full, s.reordered, s.duplicated, s.retransmitted
            );
        }
        let errors = scheduler.send_errors.load(Ordering::Relaxed);
        if errors > 0 {
            eprintln!("qed-link: udp send errors={errors}");
        }
    }
}
