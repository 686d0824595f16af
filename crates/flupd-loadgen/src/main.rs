//! flupd-loadgen: publishes flight updates to a loopback MQTT broker over
//! TLS, for bench/run.
//!
//! Each payload is a flight update in the stand-in's sample shapes with
//! `Seq` (the message number) and `SentNs` (nanoseconds since the Unix epoch,
//! taken just before the PUBLISH is queued) added, padded with a `Pad` string
//! to exactly `--size` bytes. A subscriber that writes the payload lets the
//! harness compute the latency from publish to written line.
//!
//! QoS 1 is pipelined: up to `--inflight` PUBLISH packets wait for their
//! PUBACK at once, so the rate is not bounded by one round trip per message.
//! The run stops after `--count` messages or `--max-seconds`, whichever comes
//! first, and prints one JSON line with what was sent and acknowledged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport};

/// Hosts the generator accepts: it must never load anything but a local broker.
const LOOPBACK_HOSTS: [&str; 3] = ["127.0.0.1", "localhost", "::1"];

#[derive(Parser, Debug)]
#[command(about = "Publish padded flight updates with their send time to a loopback MQTT broker over TLS")]
struct Args {
    /// Broker host; only 127.0.0.1, localhost and ::1 are accepted.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Broker port (MQTT over TLS).
    #[arg(long)]
    port: u16,
    /// PEM file of the CA that signed the broker's certificate.
    #[arg(long)]
    cafile: PathBuf,
    #[arg(long)]
    username: String,
    #[arg(long)]
    password: String,
    /// QoS of every PUBLISH: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Number of messages to publish.
    #[arg(long)]
    count: u64,
    /// Payload size in bytes; every payload has exactly this size.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per second; 0 publishes as fast as the connection takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// QoS 1 messages awaiting their PUBACK at once.
    #[arg(long, default_value_t = 1000)]
    inflight: u16,
    /// Give up after this many seconds, sent or not.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// Number of the first message, so that runs against one subscriber
    /// produce distinct payloads.
    #[arg(long, default_value_t = 0)]
    first_seq: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !LOOPBACK_HOSTS.contains(&args.host.as_str()) {
        bail!("--host {}: only a loopback broker (127.0.0.1, localhost, ::1) may be loaded", args.host);
    }
    let payloads = PayloadMaker::new(args.size)?;
    // One thread: the generator then takes at most one core from the broker
    // and the subscriber under test.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let summary = runtime.block_on(run(&args, payloads))?;
    println!("{summary}");
    if summary["complete"] != serde_json::Value::Bool(true) {
        bail!("stopped after {}s before every message was sent and acknowledged", args.max_seconds);
    }
    Ok(())
}

fn tls_config(cafile: &PathBuf) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(cafile).with_context(|| format!("read {}", cafile.display()))? {
        roots.add(certificate.with_context(|| format!("parse {}", cafile.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

async fn run(args: &Args, mut payloads: PayloadMaker) -> Result<serde_json::Value> {
    let client_id = format!("flupd-loadgen-{}", std::process::id());
    let mut options = MqttOptions::new(client_id, args.host.clone(), args.port);
    options
        .set_credentials(args.username.clone(), args.password.clone())
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(args.inflight.max(1))
        .set_max_packet_size(args.size + 1024, args.size + 1024)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls_config(&args.cafile)?)));
    let (client, mut event_loop) = AsyncClient::new(options, 1024);
    let qos = if args.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_seconds);

    // Connect first, so that the rate is measured from the first PUBLISH.
    loop {
        match tokio::time::timeout_at(deadline, event_loop.poll())
            .await
            .context("timed out connecting to the broker")?
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(error) => bail!("failed to connect to {}:{}: {error}", args.host, args.port),
        }
    }

    let count = args.count;
    let rate = args.rate;
    let first_seq = args.first_seq;
    let publisher_client = client.clone();
    let started = Instant::now();
    let publisher = async move {
        let start = tokio::time::Instant::now();
        for n in 0..count {
            if rate > 0 {
                // Each message has its own slot, so a late wakeup does not
                // lower the average rate.
                let slot = start + Duration::from_nanos(n * 1_000_000_000 / rate);
                tokio::time::sleep_until(slot).await;
            }
            let (topic, payload) = payloads.make(first_seq + n);
            if publisher_client.publish(topic, qos, false, payload).await.is_err() {
                return n;
            }
        }
        count
    };

    // The event loop runs beside the publisher: it writes the PUBLISH
    // packets and counts what the broker took.
    let driver = async {
        let mut written = 0u64;
        let mut acked = 0u64;
        loop {
            let done = if qos == QoS::AtMostOnce { written >= count } else { acked >= count };
            if done {
                return Ok((written, acked));
            }
            match event_loop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(_))) => written += 1,
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(error) => return Err((written, acked, error)),
            }
        }
    };

    let outcome = tokio::time::timeout_at(deadline, async { tokio::join!(publisher, driver) }).await;
    let seconds = started.elapsed().as_secs_f64();
    let (queued, written, acked, complete, error) = match outcome {
        Err(_) => (0, 0, 0, false, Some("timed out".to_owned())),
        Ok((queued, Ok((written, acked)))) => (queued, written, acked, true, None),
        Ok((queued, Err((written, acked, error)))) => (queued, written, acked, false, Some(error.to_string())),
    };

    if complete {
        // DISCONNECT after the last packet went out; a failure here changes
        // nothing that was measured.
        let _ = client.disconnect().await;
        let goodbye = async {
            while let Ok(event) = event_loop.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
    }

    Ok(serde_json::json!({
        "qos": args.qos,
        "size": args.size,
        "count": count,
        "queued": queued,
        "written": written,
        "acked": acked,
        "seconds": seconds,
        "rate": if seconds > 0.0 { written as f64 / seconds } else { 0.0 },
        "complete": complete,
        "error": error,
    }))
}

/// Builds payloads of one fixed size from the stand-in's samples.
struct PayloadMaker {
    size: usize,
    today: chrono::NaiveDate,
}

/// Maximum length of the suffix `,"Seq":N,"SentNs":T,"Pad":""}`: 27 fixed
/// bytes and two numbers of at most 20 digits.
const SUFFIX_MAX: usize = 27 + 2 * 20;

/// The short form used when a full sample does not fit: only the code.
const COMPACT_PREFIX: &str = r#"{"Update":{"Code":"MVT ED"}"#;

impl PayloadMaker {
    fn new(size: usize) -> Result<PayloadMaker> {
        if size < COMPACT_PREFIX.len() + SUFFIX_MAX {
            bail!("--size {size}: payloads need at least {} bytes", COMPACT_PREFIX.len() + SUFFIX_MAX);
        }
        Ok(PayloadMaker { size, today: chrono::Utc::now().date_naive() })
    }

    /// Returns the topic and payload of message `seq`, stamped with the
    /// current time.
    fn make(&mut self, seq: u64) -> (String, Vec<u8>) {
        let (topic, sample) = flupd_standin::sample_update(seq, self.today);
        // A sample is a JSON object, so dropping its closing brace leaves
        // room to append fields.
        let full = &sample[..sample.len() - 1];
        let prefix: &[u8] = if full.len() + SUFFIX_MAX <= self.size { full } else { COMPACT_PREFIX.as_bytes() };

        let sent_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64);
        let fields = format!(r#","Seq":{seq},"SentNs":{sent_ns},"Pad":""#);
        let mut payload = Vec::with_capacity(self.size);
        payload.extend_from_slice(prefix);
        payload.extend_from_slice(fields.as_bytes());
        // Two bytes remain for the closing quote and brace.
        let padding = self.size - payload.len() - 2;
        payload.resize(payload.len() + padding, b'x');
        payload.extend_from_slice(b"\"}");
        (topic, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_requested_size() {
        for size in [100, 1024] {
            let mut maker = PayloadMaker::new(size).unwrap();
            for seq in [0, 7, 199_999] {
                let (_, payload) = maker.make(seq);
                assert_eq!(payload.len(), size);
                let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(value["Seq"], seq);
                assert!(value["SentNs"].as_u64().unwrap() > 0);
            }
        }
    }

    #[test]
    fn large_payloads_carry_full_sample() {
        let mut maker = PayloadMaker::new(1024).unwrap();
        let (_, payload) = maker.make(3);
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert!(value["Meta"].is_object());
    }

    #[test]
    fn tiny_size_rejected() {
        assert!(PayloadMaker::new(50).is_err());
    }
}
