//! A TCP relay a test routes one connection path through, so it can cut that path the way a
//! network partition does while everything else keeps talking.
//!
//! [`Relay::cut`] blackholes the path: bytes in flight on open connections are no longer
//! forwarded (their callers wait for their own deadlines, as with lost packets), and new
//! connections are accepted but never answered. [`Relay::heal`] closes the stalled connections
//! and forwards new ones again.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// A relay from a loopback port to `target`.
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped at every cut and heal, so connections of an earlier state close.
    generation: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying connections to `target` from a new loopback port.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let accept = {
            let (cut, generation) = (cut.clone(), generation.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let _ = client.set_nodelay(true);
                    let changed = generation.subscribe();
                    tokio::spawn(relay(client, target, cut.clone(), changed));
                }
            })
        };
        Self {
            addr,
            cut,
            generation,
            accept,
        }
    }

    /// Returns the address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the target's `mysql://` url with the relay's address in its place.
    pub fn mysql_url(&self, target_url: &str, target: SocketAddr) -> String {
        target_url.replace(&target.to_string(), &self.addr.to_string())
    }

    /// Stops forwarding: open connections stall, new ones are never answered.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards again; connections that stalled during the cut are closed.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Forwards one connection until either side closes or the relay's state changes: a cut
/// stalls it (it holds the sockets and forwards nothing), the heal after it closes it.
async fn relay(
    client: TcpStream,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    mut changed: watch::Receiver<u64>,
) {
    if cut.load(Ordering::SeqCst) {
        // Accepted by the kernel, never answered: like a SYN-ACK with the rest lost.
        let _ = changed.changed().await;
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let pump = async {
        let mut up = [0u8; 16 * 1024];
        let mut down = [0u8; 16 * 1024];
        loop {
            tokio::select! {
                n = client_read.read(&mut up) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
                },
                n = server_read.read(&mut down) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return },
                },
            }
        }
    };
    tokio::select! {
        () = pump => {}
        _ = changed.changed() => {
            // Cut: hold both connections open and silent until the heal, then drop them.
            if cut.load(Ordering::SeqCst) {
                let _ = changed.changed().await;
            }
        }
    }
}
