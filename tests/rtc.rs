//! LiveKit signalling at the protocol level, against the real binary: what a client needs
//! from `JoinResponse`, the subscriber offer that follows it, TURN credentials, ping/pong,
//! room updates, a second session of the same identity replacing the first, and refusals.
//! (Media and the SDK's view are in tests/python/test_sfu_livekit.py.)

mod common;

use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use hmac::Mac;
use livekit_protocol::{
    self as proto, SignalRequest, SignalResponse, signal_request, signal_response,
};
use prost::Message as _;
use sparks_sfu::token::{self, Claims, VideoGrant};
use tokio_tungstenite::tungstenite::{self, Message};

use common::TestServer;

const SECRET: &str = "an-rtc-test-secret-0123456789abcdef012345";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server() -> TestServer {
    server_resuming_for(20).await
}

async fn server_resuming_for(seconds: u64) -> TestServer {
    TestServer::start_with(&format!(
        "[ratelimit]\nenabled = false\n[rtc]\napi_key = \"key\"\napi_secret = \"{SECRET}\"\n\
         turn_uris = [\"turn:turn.example.org:3478?transport=udp\"]\n\
         turn_shared_secret = \"turn-secret\"\nresume_window_secs = {seconds}\n"
    ))
    .await
}

fn token_for(identity: &str, room: &str, secret: &str, ttl: i64) -> String {
    token_publishing(identity, room, secret, ttl, false)
}

fn token_publishing(identity: &str, room: &str, secret: &str, ttl: i64, publish: bool) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = Claims {
        iss: "key".into(),
        sub: identity.into(),
        exp: now + ttl,
        video: VideoGrant {
            room_join: true,
            room: room.into(),
            can_publish: Some(publish),
            ..Default::default()
        },
        ..Default::default()
    };
    token::sign(&claims, secret)
}

async fn connect(server: &TestServer, token: &str) -> Result<Socket, tungstenite::Error> {
    connect_query(server, token, "").await
}

/// Connects with more query parameters (`&reconnect=1&sid=...` to resume).
async fn connect_query(
    server: &TestServer,
    token: &str,
    more: &str,
) -> Result<Socket, tungstenite::Error> {
    let url = format!(
        "ws://127.0.0.1:{}/livekit/sfu/rtc?access_token={token}&auto_subscribe=1{more}",
        server.port
    );
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

async fn next(ws: &mut Socket) -> signal_response::Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a signal within 10 s")
            .expect("open")
            .expect("readable");
        if let Message::Binary(bytes) = message {
            let response = SignalResponse::decode(bytes.as_ref()).expect("protobuf");
            return response.message.expect("a message");
        }
    }
}

/// The next message `pick` accepts (others are skipped).
async fn expect<T>(
    ws: &mut Socket,
    mut pick: impl FnMut(signal_response::Message) -> Option<T>,
) -> T {
    loop {
        if let Some(found) = pick(next(ws).await) {
            return found;
        }
    }
}

async fn next_offer(ws: &mut Socket) -> proto::SessionDescription {
    expect(ws, |m| match m {
        signal_response::Message::Offer(offer) => Some(offer),
        _ => None,
    })
    .await
}

async fn next_update(ws: &mut Socket) -> proto::ParticipantUpdate {
    expect(ws, |m| match m {
        signal_response::Message::Update(u) => Some(u),
        _ => None,
    })
    .await
}

async fn next_pong(ws: &mut Socket) -> i64 {
    expect(ws, |m| match m {
        signal_response::Message::Pong(ts) => Some(ts),
        _ => None,
    })
    .await
}

async fn send(ws: &mut Socket, message: signal_request::Message) {
    let bytes = SignalRequest {
        message: Some(message),
    }
    .encode_to_vec();
    ws.send(Message::Binary(bytes.into())).await.expect("send");
}

#[tokio::test]
async fn join_response_gives_clients_what_they_need() {
    let server = server().await;
    let mut ws = connect(&server, &token_for("alice", "r1", SECRET, 600))
        .await
        .expect("connects");
    let join = match next(&mut ws).await {
        signal_response::Message::Join(join) => join,
        other => panic!("expected Join first, got {other:?}"),
    };
    let participant = join.participant.expect("participant");
    assert_eq!(participant.identity, "alice");
    assert!(participant.sid.starts_with("PA_"));
    let permission = participant
        .permission
        .expect("permission (the JS client needs it)");
    assert!(!permission.can_publish && permission.can_subscribe);
    assert!(!join.server_info.expect("server info").version.is_empty());
    assert!(join.ping_interval > 0 && join.ping_timeout > join.ping_interval);
    assert!(join.subscriber_primary);
    assert_eq!(join.room.expect("room").name, "r1");

    // coturn REST credentials: "<expiry>:<identity>", HMAC-SHA1 with the shared secret.
    let ice = join.ice_servers.first().expect("a TURN server");
    assert_eq!(ice.urls, ["turn:turn.example.org:3478?transport=udp"]);
    let (_, identity) = ice.username.split_once(':').expect("expiry:identity");
    assert_eq!(identity, "alice");
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"turn-secret").expect("key");
    mac.update(ice.username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(ice.credential, expected);

    // The subscriber connection is offered at once (with the data channels).
    let offer = next_offer(&mut ws).await;
    assert!(offer.sdp.contains("a=ice-lite"), "{}", offer.sdp);
    assert!(offer.sdp.contains("webrtc-datachannel"), "{}", offer.sdp);

    send(&mut ws, signal_request::Message::Ping(42)).await;
    let pong = next_pong(&mut ws).await;
    assert_eq!(pong, 42);
    send(
        &mut ws,
        signal_request::Message::PingReq(proto::Ping {
            timestamp: 7,
            rtt: 0,
        }),
    )
    .await;
    let pong = expect(&mut ws, |m| match m {
        signal_response::Message::PongResp(pong) => Some(pong),
        _ => None,
    })
    .await;
    assert_eq!(pong.last_ping_timestamp, 7);

    // Publishing without permission is refused.
    send(
        &mut ws,
        signal_request::Message::AddTrack(proto::AddTrackRequest {
            cid: "c1".into(),
            r#type: proto::TrackType::Audio as i32,
            ..Default::default()
        }),
    )
    .await;
    let refused = expect(&mut ws, |m| match m {
        signal_response::Message::RequestResponse(r) => Some(r),
        signal_response::Message::TrackPublished(_) => panic!("published without permission"),
        _ => None,
    })
    .await;
    assert_eq!(
        refused.reason,
        proto::request_response::Reason::NotAllowed as i32
    );
}

#[tokio::test]
async fn the_room_sees_joins_leaves_and_a_replaced_session() {
    let server = server().await;
    let mut alice = connect(&server, &token_for("alice", "r2", SECRET, 600))
        .await
        .expect("alice");
    let _ = next(&mut alice).await;
    let mut bob = connect(&server, &token_for("bob", "r2", SECRET, 600))
        .await
        .expect("bob");
    let join = match next(&mut bob).await {
        signal_response::Message::Join(join) => join,
        other => panic!("expected Join, got {other:?}"),
    };
    assert_eq!(join.other_participants.len(), 1);
    assert_eq!(join.other_participants[0].identity, "alice");
    let update = next_update(&mut alice).await;
    assert_eq!(update.participants[0].identity, "bob");

    // Bob connects again: the old session is told why and closed; Alice sees one Bob.
    let mut bob_again = connect(&server, &token_for("bob", "r2", SECRET, 600))
        .await
        .expect("bob again");
    let leave = expect(&mut bob, |m| match m {
        signal_response::Message::Leave(leave) => Some(leave),
        _ => None,
    })
    .await;
    assert_eq!(
        leave.reason,
        proto::DisconnectReason::DuplicateIdentity as i32
    );
    let join = match next(&mut bob_again).await {
        signal_response::Message::Join(join) => join,
        other => panic!("expected Join, got {other:?}"),
    };
    assert_eq!(join.other_participants.len(), 1);

    // Bob leaves: Alice gets him as disconnected.
    send(
        &mut bob_again,
        signal_request::Message::Leave(Default::default()),
    )
    .await;
    let gone = expect(&mut alice, |m| match m {
        signal_response::Message::Update(u)
            if u.participants.iter().any(|p| {
                p.identity == "bob"
                    && p.state == proto::participant_info::State::Disconnected as i32
            }) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    let () = gone;
}

/// Whether `ws` gets an update with `identity` disconnected within `within`.
async fn sees_leave(ws: &mut Socket, identity: &str, within: Duration) -> bool {
    tokio::time::timeout(
        within,
        expect(ws, |m| match m {
            signal_response::Message::Update(u)
                if u.participants.iter().any(|p| {
                    p.identity == identity
                        && p.state == proto::participant_info::State::Disconnected as i32
                }) =>
            {
                Some(())
            }
            _ => None,
        }),
    )
    .await
    .is_ok()
}

async fn joined(ws: &mut Socket) -> proto::JoinResponse {
    match next(ws).await {
        signal_response::Message::Join(join) => join,
        other => panic!("expected Join, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_whose_websocket_broke_is_resumed_with_what_it_missed() {
    let server = server().await;
    let mut alice = connect(&server, &token_for("alice", "r5", SECRET, 600))
        .await
        .expect("alice");
    let _ = joined(&mut alice).await;
    let mut bob = connect(&server, &token_for("bob", "r5", SECRET, 600))
        .await
        .expect("bob");
    let bob_sid = joined(&mut bob).await.participant.expect("bob").sid;
    let first_offer = next_offer(&mut bob).await;

    // Bob's WebSocket breaks (no Leave): he stays in the meeting, and misses Carol's arrival.
    drop(bob);
    assert!(!sees_leave(&mut alice, "bob", Duration::from_millis(1500)).await);
    let mut carol = connect(&server, &token_for("carol", "r5", SECRET, 600))
        .await
        .expect("carol");
    let join = joined(&mut carol).await;
    assert_eq!(
        join.other_participants.len(),
        2,
        "Bob is still in: {join:?}"
    );

    // His client resumes: ReconnectResponse first, then Carol, then the offer he never answered.
    let mut bob = connect_query(
        &server,
        &token_for("bob", "r5", SECRET, 600),
        &format!("&reconnect=1&sid={bob_sid}&reconnect_reason=1"),
    )
    .await
    .expect("bob resumes");
    match next(&mut bob).await {
        signal_response::Message::Reconnect(reconnect) => {
            assert_eq!(reconnect.ice_servers.len(), 1, "TURN again: {reconnect:?}")
        }
        other => panic!("expected ReconnectResponse first, got {other:?}"),
    }
    let update = next_update(&mut bob).await;
    assert!(update.participants.iter().any(|p| p.identity == "carol"));
    let offer = next_offer(&mut bob).await;
    assert_eq!(offer.id, first_offer.id);
    assert_eq!(offer.sdp, first_offer.sdp);
    send(&mut bob, signal_request::Message::Ping(5)).await;
    let pong = next_pong(&mut bob).await;
    assert_eq!(pong, 5);

    // A resume of a session that does not exist is told to join afresh.
    let mut stranger = connect_query(
        &server,
        &token_for("dave", "r5", SECRET, 600),
        "&reconnect=1&sid=PA_notthere",
    )
    .await
    .expect("connects");
    match next(&mut stranger).await {
        signal_response::Message::Leave(leave) => {
            assert_eq!(leave.action, proto::leave_request::Action::Reconnect as i32);
            assert!(leave.can_reconnect);
        }
        other => panic!("expected Leave, got {other:?}"),
    }
    // Nor can another identity take Bob's session over.
    let mut impostor = connect_query(
        &server,
        &token_for("mallory", "r5", SECRET, 600),
        &format!("&reconnect=1&sid={bob_sid}"),
    )
    .await
    .expect("connects");
    assert!(matches!(
        next(&mut impostor).await,
        signal_response::Message::Leave(_)
    ));
    // Bob is still there for Alice.
    assert!(!sees_leave(&mut alice, "bob", Duration::from_millis(500)).await);
}

#[tokio::test]
async fn a_resume_before_the_old_socket_is_noticed_resends_what_may_be_lost() {
    // Bob's connection dies without the server noticing (its socket stays open): what the
    // server writes to it meanwhile is lost for him. When he resumes he is told everyone
    // again, who left, and the TrackPublished of a track still waiting for its media.
    let server = server().await;
    let mut alice = connect(&server, &token_for("alice", "r7", SECRET, 600))
        .await
        .expect("alice");
    let _ = joined(&mut alice).await;
    let bob_token = token_publishing("bob", "r7", SECRET, 600, true);
    let mut bob = connect(&server, &bob_token).await.expect("bob");
    let bob_sid = joined(&mut bob).await.participant.expect("bob").sid;
    let first_offer = next_offer(&mut bob).await;
    send(
        &mut bob,
        signal_request::Message::AddTrack(proto::AddTrackRequest {
            cid: "mic".to_owned(),
            name: "mic".to_owned(),
            r#type: proto::TrackType::Audio as i32,
            ..Default::default()
        }),
    )
    .await;
    let mut carol = connect(&server, &token_for("carol", "r7", SECRET, 600))
        .await
        .expect("carol");
    let _ = joined(&mut carol).await;
    let mut dave = connect(&server, &token_for("dave", "r7", SECRET, 600))
        .await
        .expect("dave");
    let _ = joined(&mut dave).await;
    send(
        &mut dave,
        signal_request::Message::Leave(proto::LeaveRequest::default()),
    )
    .await;
    assert!(sees_leave(&mut alice, "dave", Duration::from_secs(5)).await);

    let mut resumed = connect_query(&server, &bob_token, &format!("&reconnect=1&sid={bob_sid}"))
        .await
        .expect("bob resumes");
    assert!(matches!(
        next(&mut resumed).await,
        signal_response::Message::Reconnect(_)
    ));
    let update = next_update(&mut resumed).await;
    let state = |identity: &str| {
        update
            .participants
            .iter()
            .find(|p| p.identity == identity)
            .map(|p| p.state)
    };
    let active = Some(proto::participant_info::State::Active as i32);
    assert_eq!(state("alice"), active, "{update:?}");
    assert_eq!(state("carol"), active, "{update:?}");
    assert_eq!(
        state("dave"),
        Some(proto::participant_info::State::Disconnected as i32),
        "{update:?}"
    );
    assert_eq!(state("bob"), None, "not himself");
    let published = expect(&mut resumed, |m| match m {
        signal_response::Message::TrackPublished(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(published.cid, "mic");
    let offer = next_offer(&mut resumed).await;
    assert_eq!(offer.id, first_offer.id, "the unanswered offer again");

    // The old socket is closed by the server once the new one has taken over.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = bob.next().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the old socket stays open");
    assert!(!sees_leave(&mut alice, "bob", Duration::from_millis(500)).await);
}

#[tokio::test]
async fn a_broken_session_not_resumed_in_time_leaves() {
    let server = server_resuming_for(1).await;
    let mut alice = connect(&server, &token_for("alice", "r6", SECRET, 600))
        .await
        .expect("alice");
    let _ = joined(&mut alice).await;
    let mut bob = connect(&server, &token_for("bob", "r6", SECRET, 600))
        .await
        .expect("bob");
    let _ = joined(&mut bob).await;
    drop(bob);
    assert!(sees_leave(&mut alice, "bob", Duration::from_secs(5)).await);
}

#[tokio::test]
async fn bad_tokens_and_v1_are_refused() {
    let server = server().await;
    for token in [
        token_for("eve", "r3", "wrong-secret-wrong-secret-wrong-secret", 600),
        token_for("eve", "r3", SECRET, -3600),
        "garbage".to_owned(),
    ] {
        match connect(&server, &token).await {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
            other => panic!("expected a 401, got {other:?}"),
        }
    }
    let url = format!("ws://127.0.0.1:{}/livekit/sfu/rtc/v1", server.port);
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected a 404 for v1, got {other:?}"),
    }
}

#[tokio::test]
async fn the_token_is_renewed_before_it_expires() {
    let server = server().await;
    // Valid for 4 more seconds: a renewed one comes about halfway.
    let mut ws = connect(&server, &token_for("carol", "r4", SECRET, 4))
        .await
        .expect("connects");
    let renewed = expect(&mut ws, |m| match m {
        signal_response::Message::RefreshToken(t) => Some(t),
        _ => None,
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = token::verify_join(&renewed, |k| (k == "key").then(|| SECRET.to_owned()), now)
        .expect("signed with the server's secret");
    assert_eq!(claims.sub, "carol");
    assert_eq!(claims.video.room, "r4");
    assert!(
        claims.exp > now + 600,
        "renewed for longer: {}",
        claims.exp - now
    );
}
