//! Faults injected on purpose: GHL writes that fail with a 500 before they are applied,
//! writes that are applied but whose answer is lost, and latency on every answer; and the
//! faults of pushed events (`DeliveryFaults`: dropped, delayed, duplicated, reordered, and
//! the sender's retries), which `push` applies.
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

/// Which failed deliveries the sender tries again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// Any answer other than 2xx, and a connection that fails or times out: what most
    /// senders do, and what lets a receiver answer 5xx to be asked again.
    #[default]
    Errors,
    /// Only a 429: GHL's marketplace webhooks are said to retry nothing else
    /// (GoHighLevel/highlevel-api-docs#257), so a 5xx or no answer loses the event.
    #[serde(rename = "429")]
    TooManyRequests,
}

/// Faults of the events the sandbox pushes (Capsule REST hooks, GHL webhooks), and how the
/// sender retries. Rates are fractions from 0 to 1, drawn per event from a generator that
/// `seed` restarts, so a seed gives the same fates for the same sequence of events.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryFaults {
    /// Share of events never sent.
    pub drop_rate: f64,
    /// Share of events sent twice (the same bytes: the same `webhookId` and signature).
    pub duplicate_rate: f64,
    /// Share of events sent `delay_ms` late (others to the same target overtake them).
    pub delay_rate: f64,
    #[serde(with = "millis", rename = "delay_ms")]
    pub delay: Duration,
    /// Share of events held back and sent just after the next event to the same target.
    pub reorder_rate: f64,
    /// Restarts the fault generator when set.
    pub seed: Option<u64>,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles for each one after.
    #[serde(with = "millis", rename = "retry_base_ms")]
    pub retry_base: Duration,
    pub retry_on: RetryOn,
    /// How long one attempt waits for the receiver's answer.
    #[serde(with = "millis", rename = "timeout_ms")]
    pub timeout: Duration,
    /// First attempts in flight to one target at once. 1 (the default) sends them one after
    /// the other, in the order of the events; more is faster against a slow receiver (as a
    /// real sender's fleet is) and lets answers overtake each other.
    pub concurrency: u32,
}

impl Default for DeliveryFaults {
    /// No faults; 6 attempts 1 s, 2 s, 4 s, 8 s, 16 s apart (GHL documents no schedule for
    /// app webhooks and Capsule none for REST hooks: a common one); 10 s per attempt (GHL
    /// asks receivers to answer within 10 s).
    fn default() -> Self {
        DeliveryFaults {
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            delay_rate: 0.0,
            delay: Duration::from_secs(1),
            reorder_rate: 0.0,
            seed: None,
            max_attempts: 6,
            retry_base: Duration::from_secs(1),
            retry_on: RetryOn::Errors,
            timeout: Duration::from_secs(10),
            concurrency: 1,
        }
    }
}

impl DeliveryFaults {
    /// Rates must be between 0 and 1, and there is at least one attempt.
    pub fn check(&self) -> Result<(), String> {
        for (name, rate) in [
            ("drop rate", self.drop_rate),
            ("duplicate rate", self.duplicate_rate),
            ("delay rate", self.delay_rate),
            ("reorder rate", self.reorder_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("the {name} must be between 0 and 1, not {rate}"));
            }
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
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
