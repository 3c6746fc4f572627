//! Faults injected on purpose: GHL writes that fail with a 500 before they are applied,
//! writes that are applied but whose answer is lost, and latency on every answer.
//!
//! A lost answer is emulated, by default, by closing the connection without sending a
//! byte: the listener hands out connections that the handler can cut, and once cut, the
//! server's attempt to write the response fails and the socket is dropped, so the client
//! sees "connection closed before message completed". The alternative (`LostAs::GatewayTimeout`)
//! answers 504 after applying, as a proxy that timed out would.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::clock::Rng;

/// How a lost answer looks to the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostAs {
    /// The connection is closed without an answer.
    #[default]
    Close,
    /// A 504 Gateway Timeout.
    #[serde(rename = "504")]
    GatewayTimeout,
}

/// The faults in force. Rates are fractions from 0 to 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of GHL writes that fail with a 500 before being applied.
    pub fail_rate: f64,
    /// Share of GHL writes that are applied but whose answer is lost.
    pub lose_responses: f64,
    pub lost_as: LostAs,
    /// Added to every answer of either API.
    #[serde(with = "millis", rename = "latency_ms")]
    pub latency: Duration,
    /// Also fault GHL reads (GETs and searches).
    pub fault_reads: bool,
}

impl Faults {
    /// Rates must be between 0 and 1.
    pub fn check(&self) -> Result<(), String> {
        for (name, rate) in [("fail rate", self.fail_rate), ("lose-responses rate", self.lose_responses)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("the {name} must be between 0 and 1, not {rate}"));
            }
        }
        Ok(())
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// A 500, nothing applied.
    Fail,
    /// Applied, answer lost.
    Lose(LostAs),
}

/// Draws the fate of a request the faults apply to.
pub fn roll(faults: &Faults, rng: &mut Rng) -> Fault {
    if faults.fail_rate > 0.0 && rng.chance(faults.fail_rate) {
        Fault::Fail
    } else if faults.lose_responses > 0.0 && rng.chance(faults.lose_responses) {
        Fault::Lose(faults.lost_as)
    } else {
        Fault::None
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

// ---------------------------------------------------------------------------------------
// Connections that a handler can cut.

/// The switch that cuts one connection; handlers get it through `ConnectInfo`.
#[derive(Debug, Clone, Default)]
pub struct Cut(Arc<AtomicBool>);

impl Cut {
    pub fn cut(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_cut(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A TCP connection that fails every read and write once cut.
#[derive(Debug)]
pub struct CuttableStream {
    inner: TcpStream,
    cut: Cut,
}

fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "sandbox: response lost on purpose")
}

impl AsyncRead for CuttableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.cut.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.cut.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A TCP listener whose connections can be cut.
#[derive(Debug)]
pub struct CuttableListener(pub TcpListener);

impl axum::serve::Listener for CuttableListener {
    type Io = CuttableStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    return (CuttableStream { inner, cut: Cut::default() }, addr);
                }
                // Out of file descriptors and the like: wait a little, as axum's own
                // listener does, rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, CuttableListener>> for Cut {
    fn connect_info(stream: axum::serve::IncomingStream<'_, CuttableListener>) -> Self {
        stream.io().cut.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_decide_the_share_of_faults() {
        let faults = Faults { fail_rate: 0.2, lose_responses: 0.5, ..Faults::default() };
        let mut rng = Rng::new(1);
        let draws: Vec<Fault> = (0..10_000).map(|_| roll(&faults, &mut rng)).collect();
        let failed = draws.iter().filter(|f| **f == Fault::Fail).count();
        let lost = draws.iter().filter(|f| matches!(f, Fault::Lose(_))).count();
        assert!((1_800..2_200).contains(&failed), "{failed}");
        // Half of the 80% that did not fail.
        assert!((3_700..4_300).contains(&lost), "{lost}");
        assert_eq!(roll(&Faults::default(), &mut rng), Fault::None);
    }

    #[test]
    fn faults_read_and_write_as_json() {
        let f: Faults = serde_json::from_str(r#"{"fail_rate": 0.1, "latency_ms": 250, "lost_as": "504"}"#).unwrap();
        assert_eq!(f.latency, Duration::from_millis(250));
        assert_eq!(f.lost_as, LostAs::GatewayTimeout);
        assert!(serde_json::from_str::<Faults>(r#"{"fail": 1}"#).is_err());
        assert!(Faults { fail_rate: 1.5, ..f }.check().is_err());
    }
}
