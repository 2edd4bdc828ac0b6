//! qed-link end to end, on loopback: datagrams cross the UDP relay and come
//! back no sooner than the two delays, and a TCP stream crosses a lossy link
//! whole and in order (a stream loss is a delay, never a gap). The pure
//! schedule has its own unit tests (src/link.rs).

mod common;

use common::{free_tcp_port, free_udp_port, Proc};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn start_link(args: &[&str]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_qed-link"))
        .args(args)
        .args(["--stats-every", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qed-link");
    Proc(child)
}

/// Echoes datagrams until 30 s pass without one.
fn udp_echo() -> std::net::SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind echo");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let addr = socket.local_addr().expect("addr");
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    addr
}

#[test]
fn datagrams_come_back_after_both_delays() {
    let echo = udp_echo();
    let port = free_udp_port();
    let _link = start_link(&[
        "--udp",
        &format!("127.0.0.1:{port}={echo}"),
        "--forward",
        "delay=20ms",
        "--backward",
        "delay=30ms",
    ]);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let relay = format!("127.0.0.1:{port}");
    let mut buf = [0u8; 2048];
    // The relay binds after it starts: probe until the first echo.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no echo through qed-link");
        client.send_to(b"probe", &relay).expect("send");
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            if &buf[..n] == b"probe" {
                break;
            }
        }
    }
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for i in 0..20u32 {
        let sent = Instant::now();
        client.send_to(&i.to_be_bytes(), &relay).expect("send");
        let (n, _) = client
            .recv_from(&mut buf)
            .expect("echo through a lossless link");
        assert_eq!(&buf[..n], i.to_be_bytes(), "datagram {i}");
        let rtt = sent.elapsed();
        assert!(
            rtt >= Duration::from_millis(50),
            "datagram {i} back in {rtt:?}"
        );
    }
}

#[test]
fn a_stream_crosses_a_lossy_link_whole_and_in_order() {
    let server = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let target = server.local_addr().expect("addr");
    thread::spawn(move || {
        let Ok((mut conn, _)) = server.accept() else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = conn.shutdown(Shutdown::Write);
    });
    let port = free_tcp_port();
    let _link = start_link(&[
        "--tcp",
        &format!("127.0.0.1:{port}={target}"),
        "--link",
        "delay=5ms,loss=10%,rate=80mbit",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "qed-link does not listen: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = conn.try_clone().expect("clone");
    let sending = data.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&sending).expect("send");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut back = Vec::new();
    conn.read_to_end(&mut back).expect("echo ends");
    sender.join().expect("sender");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the stream came back altered");
}
