//! nginx and HAProxy as plain reverse proxies in front of the bench's upstream, each with its
//! defaults for two cores and keep-alive to the upstream, started for the run when installed.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A peer proxy, stopped when dropped.
pub(crate) struct Peer {
    child: Child,
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM, so that nginx's master stops its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn installed(binary: &str) -> Option<String> {
    [
        "/usr/sbin/",
        "/usr/bin/",
        "/usr/local/sbin/",
        "/usr/local/bin/",
    ]
    .iter()
    .map(|d| format!("{d}{binary}"))
    .find(|p| Path::new(p).exists())
}

fn wait_until_up(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn spawn(mut cmd: Command, addr: SocketAddr, dir: tempfile::TempDir, name: &str) -> Option<Peer> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let peer = Peer {
        child,
        addr,
        _dir: dir,
    };
    if wait_until_up(addr) {
        Some(peer)
    } else {
        println!("{name} did not start: its row is left out");
        None
    }
}

/// nginx 1.22-style reverse proxy: two workers, an upstream keepalive pool.
pub(crate) fn nginx(upstream: SocketAddr) -> Option<Peer> {
    let Some(binary) = installed("nginx") else {
        println!("nginx not found (apt-get install nginx-light): its row is left out");
        return None;
    };
    let dir = tempfile::tempdir().ok()?;
    let addr = free_port();
    let d = dir.path().display();
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream up {{ server {upstream}; keepalive 64; }}\n\
         server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://up;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let mut cmd = Command::new(binary);
    cmd.arg("-p").arg(dir.path()).arg("-c").arg(&path);
    spawn(cmd, addr, dir, "nginx")
}

/// HAProxy in HTTP mode: two threads, `http-reuse always`.
pub(crate) fn haproxy(upstream: SocketAddr) -> Option<Peer> {
    let Some(binary) = installed("haproxy") else {
        println!("haproxy not found (apt-get install haproxy): its row is left out");
        return None;
    };
    let dir = tempfile::tempdir().ok()?;
    let addr = free_port();
    let conf = format!(
        "global\n  maxconn 4096\n  nbthread 2\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n\
         frontend f\n  bind {addr}\n  default_backend b\n\
         backend b\n  server s1 {upstream}\n"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, conf).ok()?;
    let mut cmd = Command::new(binary);
    cmd.arg("-db").arg("-f").arg(&path);
    spawn(cmd, addr, dir, "haproxy")
}
