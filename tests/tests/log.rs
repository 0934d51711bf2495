//! The JetStream adapter against a real nats-server: group commit, isolation of a failing
//! request, idempotency by message id, optimistic concurrency, durable consumption.

use std::collections::BTreeSet;

use bytes::Bytes;
use muster_log::{AppendError, Appender, AppenderConfig, Expect, LogConsumer, LogReader, Outgoing};
use muster_tests::Nats;

const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn msg(subject: &str, id: &str, expect: Expect) -> Outgoing {
    Outgoing {
        subject: subject.into(),
        payload: Bytes::from(format!("payload of {id}")),
        msg_id: id.into(),
        expect,
    }
}

#[tokio::test]
async fn provisioning_is_idempotent_and_keeps_everything() {
    let nats = Nats::start().await;
    let (client, _) = nats.log().await;
    let js = async_nats::jetstream::new(client);
    let mut again = muster_log::provision(&js, &muster_log::LogConfig::default())
        .await
        .expect("second provisioning");
    let info = again.info().await.expect("info");
    assert!(info.config.allow_atomic_publish);
    assert!(info.config.allow_direct);
    assert_eq!(info.config.max_age, std::time::Duration::ZERO);
    assert_eq!(info.config.max_messages, -1);
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
}

#[tokio::test]
async fn concurrent_appends_are_group_committed_into_few_batches() {
    let nats = Nats::start().await;
    let (client, stream) = nats.log().await;
    let (appender, _) = Appender::start(client, AppenderConfig::default());
    let n = 400;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let a = appender.clone();
            tokio::spawn(async move {
                a.append(vec![msg(
                    &format!("muster.ev.i.p.need.{i}"),
                    &format!("k{i}"),
                    Expect::Anything,
                )])
                .await
            })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    for t in tasks {
        let a = t.await.expect("task").expect("append");
        assert_eq!(a.count, 1);
        assert!(!a.duplicate);
        seqs.insert(a.first_seq);
    }
    assert_eq!(
        seqs,
        (1..=n as u64).collect(),
        "each request got its own sequence"
    );
    // Every message carries the id of the batch that stored it.
    let reader = LogReader::new(stream.clone());
    let mut batches = BTreeSet::new();
    for seq in 1..=n as u64 {
        let raw = stream.direct_get(seq).await.expect("stored");
        batches.insert(raw.headers.get("Nats-Batch-Id").map(|v| v.to_string()));
        let m = reader.at(seq).await.expect("read").expect("present");
        // The sequence a caller was told is the sequence of its own message.
        let i: usize = m
            .subject
            .rsplit('.')
            .next()
            .expect("id")
            .parse()
            .expect("number");
        assert_eq!(m.msg_id.as_deref(), Some(format!("k{i}").as_str()));
    }
    assert!(
        batches.len() <= n / 4,
        "{n} concurrent appends used {} batches; group commit is not grouping",
        batches.len()
    );
}

#[tokio::test]
async fn a_failing_request_is_isolated_and_its_batch_mates_are_stored() {
    let nats = Nats::start().await;
    let (client, stream) = nats.log().await;
    let (appender, _) = Appender::start(
        client,
        AppenderConfig {
            max_in_flight: 1,
            ..Default::default()
        },
    );
    appender
        .append(vec![msg(
            "muster.ev.i.p.need.taken",
            "first",
            Expect::Anything,
        )])
        .await
        .expect("seed");
    let bad_create = 17;
    let stale_update = 42;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let a = appender.clone();
            tokio::spawn(async move {
                let m = if i == bad_create {
                    msg(
                        "muster.ev.i.q.need.taken",
                        "dup-create",
                        Expect::Nothing {
                            filter: "muster.ev.i.*.need.taken".into(),
                        },
                    )
                } else if i == stale_update {
                    msg(
                        "muster.ev.i.p.need.taken",
                        "stale",
                        Expect::LastOnSubject(99),
                    )
                } else {
                    msg(
                        &format!("muster.ev.i.p.need.n{i}"),
                        &format!("m{i}"),
                        Expect::Anything,
                    )
                };
                (i, a.append(vec![m]).await)
            })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        let (i, r) = t.await.expect("task");
        if i == bad_create || i == stale_update {
            assert!(
                matches!(r, Err(AppendError::WrongLastSequence(_))),
                "{i}: {r:?}"
            );
        } else {
            r.unwrap_or_else(|e| panic!("request {i} should be stored: {e}"));
            stored += 1;
        }
    }
    let mut stream = stream;
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages, 1 + stored);
}

#[tokio::test]
async fn a_retried_request_is_stored_once_and_answered_with_the_original_sequence() {
    let nats = Nats::start().await;
    let (client, mut stream) = nats.log().await;
    let (appender, _) = Appender::start(client, AppenderConfig::default());
    let m = msg("muster.ev.i.p.need.a", "agency:key-1", Expect::Anything);
    let first = appender.append(vec![m.clone()]).await.expect("first");
    appender
        .append(vec![msg("muster.ev.i.p.need.b", "other", Expect::Anything)])
        .await
        .expect("other");
    let retry = appender.append(vec![m]).await.expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.first_seq, first.first_seq);
    assert_eq!(stream.info().await.expect("info").state.messages, 2);
}

#[tokio::test]
async fn a_multi_message_request_is_all_or_nothing() {
    let nats = Nats::start().await;
    let (client, mut stream) = nats.log().await;
    let (appender, _) = Appender::start(client, AppenderConfig::default());
    appender
        .append(vec![msg("muster.ev.i.p.need.x", "x", Expect::Anything)])
        .await
        .expect("seed");
    let bulk = |tag: &str, bad: bool| -> Vec<Outgoing> {
        (0..10)
            .map(|i| {
                let expect = if bad && i == 7 {
                    Expect::Nothing {
                        filter: "muster.ev.i.*.need.x".into(),
                    }
                } else {
                    Expect::Anything
                };
                msg(
                    &format!("muster.ev.i.p.need.{tag}{i}"),
                    &format!("{tag}#{i}"),
                    expect,
                )
            })
            .collect()
    };
    let err = appender
        .append(bulk("bad", true))
        .await
        .expect_err("one member fails");
    assert!(matches!(err, AppendError::WrongLastSequence(_)), "{err:?}");
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        1,
        "nothing of it stored"
    );

    let ok = appender.append(bulk("good", false)).await.expect("stored");
    assert_eq!((ok.first_seq, ok.count), (2, 10));
    let again = appender
        .append(bulk("good", false))
        .await
        .expect_err("retry");
    assert_eq!(again, AppendError::DuplicateRequest);
    assert_eq!(stream.info().await.expect("info").state.messages, 11);
}

#[tokio::test]
async fn a_durable_consumer_delivers_in_order_and_resumes_after_its_acks() {
    let nats = Nats::start().await;
    let (client, stream) = nats.log().await;
    let (appender, _) = Appender::start(client, AppenderConfig::default());
    for i in 0..5 {
        appender
            .append(vec![msg(
                &format!("muster.ev.i.p.need.c{i}"),
                &format!("c{i}"),
                Expect::Anything,
            )])
            .await
            .expect("append");
    }
    let mut consumer = LogConsumer::durable(
        &stream,
        "test-fold",
        vec![muster_schema::subject::all()],
        ACK_WAIT,
    )
    .await
    .expect("consumer");
    for expected in 1..=3 {
        let d = consumer.next().await.expect("open").expect("delivered");
        assert_eq!(d.seq, expected);
        // Not a Muster envelope: reported, not a crash.
        assert!(d.envelope.is_err());
        d.ack().await.expect("ack");
    }
    // A reader that stops (or crashes) without acknowledging what it was sent: those messages
    // come again after the ack wait.
    drop(consumer);
    let mut resumed = LogConsumer::durable(
        &stream,
        "test-fold",
        vec![muster_schema::subject::all()],
        ACK_WAIT,
    )
    .await
    .expect("consumer again");
    let d = resumed.next().await.expect("open").expect("delivered");
    assert_eq!(d.seq, 4, "resumes after the last acknowledged message");
}

/// Appends one message, retrying while the server is coming back.
async fn append_retrying(appender: &Appender, m: Outgoing) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match appender.append(vec![m.clone()]).await {
            Ok(a) => return a.first_seq,
            Err(AppendError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("append {}: {e}", m.msg_id),
        }
    }
}

/// Reads from `consumer` until it delivers sequence `last`, returning every sequence delivered
/// and how many errors it reported on the way.
async fn read_through(consumer: &mut LogConsumer, last: u64) -> (Vec<u64>, usize) {
    let mut seqs = Vec::new();
    let mut errors = 0;
    let read = async {
        while seqs.last() != Some(&last) {
            match consumer
                .next()
                .await
                .expect("a tailing consumer never ends")
            {
                Ok(d) => seqs.push(d.seq),
                Err(_) => errors += 1,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("the consumer reached the last sequence");
    (seqs, errors)
}

#[tokio::test]
async fn a_tailing_consumer_reads_on_in_order_after_the_server_is_killed_and_restarted() {
    let mut nats = Nats::start().await;
    let (client, stream) = nats.log().await;
    let (appender, _) = Appender::start(client, AppenderConfig::default());
    let subject = |incident: &str, i: u32| format!("muster.ev.{incident}.p.need.t{i}");
    // Two incidents interleaved; the consumer follows one of them, from its third event on.
    for i in 0..10 {
        for incident in ["a", "b"] {
            let id = format!("{incident}{i}");
            append_retrying(&appender, msg(&subject(incident, i), &id, Expect::Anything)).await;
        }
    }
    let filter = vec!["muster.ev.a.>".to_string()];
    let mut tail = LogConsumer::tail(&stream, filter, 5).await.expect("tail");
    let (before, errors) = read_through(&mut tail, 19).await;
    assert_eq!(before, vec![5, 7, 9, 11, 13, 15, 17, 19]);
    assert_eq!(errors, 0);

    // The server dies with the consumer's state (kept in memory) and comes back; the reader is
    // waiting for more when it does.
    nats.server.kill9().await.expect("kill -9");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    nats.server.restart().await.expect("restart");
    let mut last = 0;
    for i in 10..20 {
        for incident in ["a", "b"] {
            let id = format!("{incident}{i}");
            let seq =
                append_retrying(&appender, msg(&subject(incident, i), &id, Expect::Anything)).await;
            if incident == "a" {
                last = seq;
            }
        }
    }
    assert_eq!(last, 39, "nothing was lost by the kill, so sequences go on");
    let (after, _errors) = read_through(&mut tail, last).await;
    assert_eq!(
        after,
        (21..=39).step_by(2).collect::<Vec<_>>(),
        "every later event of the incident, once, in order"
    );
}
