//! Tests of the stand-in against real HTTP and a real mosquitto on loopback.

use std::time::Duration;

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flupd_standin::{MqttOptions, Standin, StandinOptions, sample_update};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, Packet, Publish, QoS, SubscribeReasonCode};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Upper bound for any single wait in these tests; every wait ends as soon as its condition
/// holds.
const WAIT: Duration = Duration::from_secs(10);

async fn start(options: StandinOptions) -> Standin {
    Standin::start(options).await.expect("stand-in starts")
}

async fn request_token(standin: &Standin, secret: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/oauth/token", standin.api_base()))
        .form(&[("client_id", "demo-key"), ("client_secret", secret), ("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request completes")
}

async fn token(standin: &Standin) -> String {
    let response = request_token(standin, "demo-secret").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("token response is JSON");
    body["access_token"].as_str().expect("access_token is a string").to_owned()
}

async fn request_credentials(standin: &Standin, authorization: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/flightUpdate/credentials/JWT/flupd/flupSubTopic", standin.api_base()))
        .header("Accept", "application/json");
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    request.send().await.expect("credentials request completes")
}

struct Credentials {
    client_id: String,
    jwt: String,
    endpoint: String,
}

async fn credentials(standin: &Standin, token: &str) -> Credentials {
    let response = request_credentials(standin, Some(&format!("Bearer {token}"))).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("credentials response is JSON");
    let management = &body["CertificateManagementResource"]["CertificateManagement"];
    Credentials {
        client_id: management["clientID"].as_str().expect("clientID").to_owned(),
        jwt: management["javaWebToken"].as_str().expect("javaWebToken").to_owned(),
        endpoint: management["endpoint"].as_str().expect("endpoint").to_owned(),
    }
}

async fn issue(standin: &Standin) -> Credentials {
    let token = token(standin).await;
    credentials(standin, &token).await
}

fn options_for(standin: &Standin, credentials: &Credentials) -> MqttOptions {
    standin.mqtt_options(&credentials.client_id, &credentials.client_id, &credentials.jwt)
}

/// Connects once and returns the CONNACK outcome, disconnecting after success.
async fn connect_once(options: MqttOptions) -> Result<(), ConnectionError> {
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let result = timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .expect("CONNACK or error arrives in time");
    if result.is_ok() {
        client.try_disconnect().expect("disconnect is queued");
        let _ = timeout(WAIT, eventloop.poll()).await;
    }
    result
}

fn assert_not_authorized(result: Result<(), ConnectionError>) {
    match result {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)) => {}
        other => panic!("expected the broker to refuse with NotAuthorized, got {other:?}"),
    }
}

enum SubscriberEvent {
    Message(Publish),
    Error(String),
}

/// A connected client subscribed to a filter, whose event loop runs in its own task.
struct Subscriber {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<SubscriberEvent>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects, subscribes at QoS 1 and returns once the SUBACK granted the subscription.
    async fn start(options: MqttOptions, filter: &str) -> Subscriber {
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe is queued");
        let (suback_tx, suback_rx) = tokio::sync::oneshot::channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut suback_tx = Some(suback_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(suback))) => {
                        if let Some(tx) = suback_tx.take() {
                            let _ = tx.send(suback.return_codes);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = events_tx.send(SubscriberEvent::Message(publish));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        // The test decides what an error means, so the loop stops here
                        // instead of reconnecting.
                        let _ = events_tx.send(SubscriberEvent::Error(error.to_string()));
                        return;
                    }
                }
            }
        });
        let codes = timeout(WAIT, suback_rx).await.expect("SUBACK in time").expect("subscriber task alive");
        assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)], "subscription to {filter} granted");
        Subscriber { client, events, task }
    }

    async fn next_message(&mut self) -> Publish {
        match timeout(WAIT, self.events.recv()).await.expect("message arrives in time") {
            Some(SubscriberEvent::Message(publish)) => publish,
            Some(SubscriberEvent::Error(error)) => panic!("subscriber connection failed: {error}"),
            None => panic!("subscriber task ended"),
        }
    }

    async fn next_error(&mut self) -> String {
        loop {
            match timeout(WAIT, self.events.recv()).await.expect("connection error arrives in time") {
                Some(SubscriberEvent::Message(_)) => continue,
                Some(SubscriberEvent::Error(error)) => return error,
                None => panic!("subscriber task ended without an error"),
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode_segment(segment: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(segment).expect("segment is base64url without padding");
    serde_json::from_slice(&bytes).expect("segment is JSON")
}

#[tokio::test]
async fn token_endpoint_checks_secret() {
    let standin = start(StandinOptions::default()).await;

    let response = request_token(&standin, "demo-secret").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["access_token"].as_str().is_some_and(|token| !token.is_empty()), "body: {body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 21_600);

    let response = request_token(&standin, "wrong-secret").await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");

    assert_eq!(standin.token_calls(), 2);
    standin.shutdown().await;
}

#[tokio::test]
async fn credentials_require_bearer_token() {
    let standin = start(StandinOptions::default()).await;
    let token = token(&standin).await;

    for authorization in [None, Some("Bearer not-a-token".to_owned()), Some(format!("bearer {token}"))] {
        let response = request_credentials(&standin, authorization.as_deref()).await;
        assert_eq!(response.status(), 401, "authorization {authorization:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["Error"], "Not Authorized", "authorization {authorization:?}");
    }

    assert_eq!(standin.credential_calls(), 3);
    assert!(standin.issued_client_ids().is_empty());
    standin.shutdown().await;
}

#[tokio::test]
async fn credentials_issue_signed_jwt_per_call() {
    let standin = start(StandinOptions::default()).await;
    let token = token(&standin).await;

    let first = credentials(&standin, &token).await;
    let second = credentials(&standin, &token).await;
    assert_ne!(first.client_id, second.client_id);
    assert!(first.client_id.starts_with("flupd_"), "client id {}", first.client_id);
    assert_eq!(first.endpoint, "localhost");
    assert_eq!(standin.credential_calls(), 2);
    assert_eq!(standin.issued_client_ids(), vec![first.client_id.clone(), second.client_id.clone()]);

    let parts: Vec<&str> = first.jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "JWT {}", first.jwt);
    let header = decode_segment(parts[0]);
    assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT"}));

    let claims = decode_segment(parts[1]);
    assert_eq!(claims["clientID"], first.client_id.as_str());
    assert_eq!(claims["authGroups"], "flupSubTopic;FlightUpdate");
    assert!(claims.get("iat").is_none(), "claims {claims}");
    assert!(claims.get("nbf").is_none(), "claims {claims}");
    let created = claims["created"].as_i64().expect("created is an integer");
    let exp = claims["exp"].as_i64().expect("exp is an integer");
    assert_eq!(exp - created, 731 * 86_400);
    let now = chrono::Utc::now().timestamp();
    assert!((now - created).abs() < 60, "created {created}, now {now}");

    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, standin.jwt_public_key())
        .verify(signing_input.as_bytes(), &signature)
        .expect("JWT signature verifies with the stand-in's public key");

    standin.shutdown().await;
}

#[tokio::test]
async fn broker_accepts_only_issued_credentials() {
    let standin = start(StandinOptions::default()).await;
    let issued = issue(&standin).await;

    connect_once(options_for(&standin, &issued)).await.expect("broker accepts issued credentials");

    let wrong_jwt = format!("{}x", issued.jwt);
    assert_not_authorized(connect_once(standin.mqtt_options(&issued.client_id, &issued.client_id, &wrong_jwt)).await);

    let other = issue(&standin).await;
    assert_not_authorized(connect_once(standin.mqtt_options(&issued.client_id, &issued.client_id, &other.jwt)).await);

    standin.shutdown().await;
}

#[tokio::test]
async fn broker_rejects_revoked_client() {
    let standin = start(StandinOptions::default()).await;
    let revoked = issue(&standin).await;
    let kept = issue(&standin).await;
    let mut connected = Subscriber::start(options_for(&standin, &revoked), "prd/#").await;

    standin.revoke(&revoked.client_id).await.expect("revoke succeeds");

    assert_not_authorized(connect_once(options_for(&standin, &revoked)).await);
    connect_once(options_for(&standin, &kept)).await.expect("other client id still accepted");
    let error = connected.next_error().await;
    assert!(!error.is_empty());
    standin.revoke(&revoked.client_id).await.expect("revoking twice succeeds");
    assert!(standin.revoke("flupd_999").await.is_err(), "revoking an unknown client id fails");

    standin.shutdown().await;
}

#[tokio::test]
async fn broker_rejects_expired_jwt() {
    let options = StandinOptions {
        jwt_lifetime: Duration::from_secs(1),
        jwt_backdate: Duration::from_secs(60),
        ..StandinOptions::default()
    };
    let standin = start(options).await;
    let expired = issue(&standin).await;

    let claims = decode_segment(expired.jwt.split('.').nth(1).unwrap());
    assert!(claims["exp"].as_i64().unwrap() < chrono::Utc::now().timestamp());
    assert_not_authorized(connect_once(options_for(&standin, &expired)).await);

    standin.shutdown().await;
}

#[tokio::test]
async fn broker_rejects_jwt_after_expiry() {
    let options = StandinOptions { jwt_lifetime: Duration::from_secs(2), ..StandinOptions::default() };
    let standin = start(options).await;
    let short_lived = issue(&standin).await;
    connect_once(options_for(&standin, &short_lived)).await.expect("accepted before expiry");

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match connect_once(options_for(&standin, &short_lived)).await {
            Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)) => break,
            Ok(()) => {}
            Err(error) => panic!("unexpected connection error: {error}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "JWT still accepted after its exp");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    standin.shutdown().await;
}

#[tokio::test]
async fn subscriber_receives_publisher_samples() {
    let standin = start(StandinOptions::default()).await;
    let issued = issue(&standin).await;
    let mut subscriber = Subscriber::start(options_for(&standin, &issued), "prd/#").await;

    let publisher = standin.start_publisher(Duration::from_millis(20));
    for n in 0..5 {
        let message = subscriber.next_message().await;
        let today = chrono::Utc::now().date_naive();
        // Tolerates a run that crosses midnight UTC between publishing and receiving.
        let expected_today = sample_update(n, today);
        let expected_yesterday = sample_update(n, today.pred_opt().unwrap());
        let received = (message.topic.clone(), message.payload.to_vec());
        assert!(received == expected_today || received == expected_yesterday, "message {n}: {message:?}");
        assert_eq!(message.qos, QoS::AtLeastOnce);
    }
    assert!(publisher.queued() >= 5);
    publisher.stop();

    standin.shutdown().await;
}

#[tokio::test]
async fn publish_delivers_each_qos() {
    let standin = start(StandinOptions::default()).await;
    let issued = issue(&standin).await;
    let mut subscriber = Subscriber::start(options_for(&standin, &issued), "prd/#").await;

    for qos in [0u8, 1, 2] {
        let topic = format!("prd/FlightUpdate/LH/LH400/2026-07-2{qos}");
        let payload = format!("payload {qos}");
        standin.publish(&topic, payload.as_bytes(), qos).await.expect("publish succeeds");
        let message = subscriber.next_message().await;
        assert_eq!(message.topic, topic);
        assert_eq!(message.payload.as_ref(), payload.as_bytes());
    }
    assert!(standin.publish("prd/x", b"", 3).await.is_err(), "QoS 3 is invalid");

    standin.shutdown().await;
}

#[tokio::test]
async fn clients_cannot_publish() {
    let standin = start(StandinOptions::default()).await;
    let subscriber_credentials = issue(&standin).await;
    let publisher_credentials = issue(&standin).await;
    let mut subscriber = Subscriber::start(options_for(&standin, &subscriber_credentials), "prd/#").await;

    // mosquitto acknowledges a denied QoS 1 publish but drops the message. The admin message
    // published after the PUBACK must therefore be the first one the subscriber receives.
    // NOTE: once in five clean-clone CI runs under load, mosquitto closed this connection
    // before the PUBACK ("closed by peer abruptly"); twelve reruns alone passed. The cause is
    // not known yet.
    let (client, mut eventloop) = AsyncClient::new(options_for(&standin, &publisher_credentials), 4);
    client.publish("prd/FlightUpdate/LH/LH400/2026-07-22", QoS::AtLeastOnce, false, "forged").await.unwrap();
    timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(error) => panic!("client connection failed: {error}"),
            }
        }
    })
    .await
    .expect("PUBACK in time");

    standin.publish("prd/FlightUpdate/LH/LH400/2026-07-22", b"admin", 1).await.unwrap();
    let message = subscriber.next_message().await;
    assert_eq!(message.payload.as_ref(), b"admin");

    standin.shutdown().await;
}

#[tokio::test]
async fn persistent_session_survives_restart() {
    let standin = start(StandinOptions { persistence: true, ..StandinOptions::default() }).await;
    let issued = issue(&standin).await;
    let mut options = options_for(&standin, &issued);
    options.set_clean_session(false);

    let subscriber = Subscriber::start(options.clone(), "prd/#").await;
    subscriber.client.disconnect().await.unwrap();
    let mut subscriber = subscriber;
    let error = subscriber.next_error().await;
    assert!(!error.is_empty());
    drop(subscriber);

    standin.stop_broker().await;
    assert!(connect_once(options_for(&standin, &issued)).await.is_err(), "broker is down");
    standin.restart_broker().await.expect("broker restarts");

    standin.publish("prd/FlightUpdate/OS/OS87/2026-07-22", b"queued", 1).await.unwrap();

    // Reconnecting without subscribing again: the stored session delivers the queued message.
    let (_client, mut eventloop) = AsyncClient::new(options, 4);
    let payload = timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => return publish.payload,
                Ok(_) => {}
                Err(error) => panic!("reconnect failed: {error}"),
            }
        }
    })
    .await
    .expect("queued message arrives in time");
    assert_eq!(payload.as_ref(), b"queued");

    standin.shutdown().await;
}

#[tokio::test]
async fn frozen_broker_answers_after_thaw() {
    let standin = start(StandinOptions::default()).await;
    let token = token(&standin).await;
    let before = credentials(&standin, &token).await;

    standin.freeze_broker();
    let frozen_attempt = timeout(Duration::from_millis(500), connect_once(options_for(&standin, &before))).await;
    assert!(frozen_attempt.is_err(), "a frozen broker sends no CONNACK");
    // Credentials issued while frozen become valid once the broker runs again.
    let during = credentials(&standin, &token).await;
    standin.thaw_broker();

    connect_once(options_for(&standin, &before)).await.expect("accepted after thaw");
    let deadline = tokio::time::Instant::now() + WAIT;
    while connect_once(options_for(&standin, &during)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "credentials issued while frozen never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    standin.shutdown().await;
}

#[test]
fn standin_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Standin>();
    assert_send_sync::<flupd_standin::PublisherHandle>();
}

#[tokio::test]
async fn token_endpoint_rejects_bad_requests() {
    let standin = start(StandinOptions::default()).await;
    let url = format!("{}/v1/oauth/token", standin.api_base());
    let client = reqwest::Client::new();

    let wrong_grant = client
        .post(&url)
        .form(&[("client_id", "demo-key"), ("client_secret", "demo-secret"), ("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_grant.status(), 400);
    let body: Value = wrong_grant.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");

    let missing_secret = client
        .post(&url)
        .form(&[("client_id", "demo-key"), ("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing_secret.status(), 400);
    let body: Value = missing_secret.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    let json_body = client.post(&url).json(&serde_json::json!({"client_id": "demo-key"})).send().await.unwrap();
    assert_eq!(json_body.status(), 400);

    assert_eq!(standin.token_calls(), 3);
    standin.shutdown().await;
}

#[tokio::test]
async fn credentials_require_json_accept() {
    let standin = start(StandinOptions::default()).await;
    let token = token(&standin).await;

    let response = reqwest::Client::new()
        .post(format!("{}/v1/flightUpdate/credentials/JWT/flupd/flupSubTopic", standin.api_base()))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 406);
    assert!(standin.issued_client_ids().is_empty());

    standin.shutdown().await;
}
