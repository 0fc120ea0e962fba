//! `egress-rotating-dns LISTEN NAME FIRST-LAST TTL`: serves `NAME`, each A
//! question answered with the next address of FIRST..=LAST (IPv4), with
//! `TTL`; prints the number of answers given, once a second while it
//! grows. `cargo xtask k8s-test` runs it as a DNS server behind kube-dns
//! (see `integration_tests::rotating_dns`).

use std::{net::Ipv4Addr, net::UdpSocket, process::ExitCode, thread, time::Duration};

use anyhow::Context as _;
use integration_tests::rotating_dns::RotatingDns;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress-rotating-dns: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, name, range, ttl] = args.as_slice() else {
        anyhow::bail!("usage: egress-rotating-dns LISTEN NAME FIRST-LAST TTL");
    };
    let (first, last) = range.split_once('-').context("FIRST-LAST")?;
    let (first, last): (Ipv4Addr, Ipv4Addr) = (first.parse()?, last.parse()?);
    let pool: Vec<Ipv4Addr> = (u32::from(first)..=u32::from(last))
        .map(Ipv4Addr::from)
        .collect();
    let socket = UdpSocket::bind(listen.as_str()).with_context(|| format!("binding {listen}"))?;
    let server = RotatingDns::on(socket, name, pool, ttl.parse().context("TTL")?)?;
    println!("serving {name} on {}", server.address);
    let mut shown = 0;
    loop {
        thread::sleep(Duration::from_secs(1));
        let answered = server.answered();
        if answered != shown {
            println!("answered {answered}");
            shown = answered;
        }
    }
}
