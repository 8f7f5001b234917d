//! Upper bounds on counts and amounts (docs/protocol-decisions.md): over HTTP, in batches and
//! over WebSocket, a number past its bound is `out_of_range` and the event is not stored.

use crate::helpers::{item_added, recv_json, send_json, unique, TestApp};
use cartstream::domain::{MAX_AMOUNT, MAX_COUNT};
use futures_util::SinkExt;
use serde_json::{json, Value};

/// `item_added` with `metadata.key` set to the raw JSON number `number`, as a client would
/// write it (`1e308` stays `1e308` on the wire).
fn raw_item_added(id: &str, key: &str, number: &str) -> String {
    let mut event = item_added(id);
    event["metadata"][key] = json!("__N__");
    event.to_string().replace("\"__N__\"", number)
}

fn out_of_range_fields(details: &Value) -> Vec<String> {
    details
        .as_array()
        .expect("details")
        .iter()
        .filter(|d| d["code"] == "out_of_range")
        .map(|d| d["field"].as_str().unwrap().to_owned())
        .collect()
}

async fn post_raw(app: &TestApp, path: &str, body: String) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn numbers_past_their_bounds_are_out_of_range_over_http() {
    let app = TestApp::spawn().await;
    for (key, number) in [
        ("quantity", "1e308"),
        ("quantity", "1000000001"),
        ("quantity", "18446744073709551615"),
        ("price", "1e308"),
        ("price", "1000000000000.5"),
    ] {
        let id = unique("big");
        let (status, body) = post_raw(&app, "/events", raw_item_added(&id, key, number)).await;
        assert_eq!(status, 422, "{key}: {number}: {body}");
        assert_eq!(body["code"], "validation_failed");
        assert_eq!(
            out_of_range_fields(&body["details"]),
            vec![format!("metadata.{key}")],
            "{key}: {number}: {body}"
        );
        let (_, stored) = app.get_json("/events?userId=user-1&limit=1000").await;
        assert!(
            !stored.to_string().contains(&id),
            "{key}: {number} was stored"
        );
    }
    // The bounds themselves are accepted.
    let id = unique("at-bound");
    let body = raw_item_added(&id, "quantity", &MAX_COUNT.to_string());
    let (status, answer) = post_raw(&app, "/events", body).await;
    assert_eq!(status, 202, "{answer}");
    let mut at_bound = item_added(&unique("at-bound"));
    at_bound["metadata"]["price"] = json!(MAX_AMOUNT);
    let (status, answer) = app.post_event(&at_bound).await;
    assert_eq!(status, 202, "{answer}");
    // Every typed count and amount of every event type has its bound.
    for event in [
        json!({"userId": "u", "eventType": "cart_viewed",
            "metadata": {"cartValue": 2e12, "itemCount": 2e9}}),
        json!({"userId": "u", "eventType": "checkout_completed",
            "metadata": {"orderId": "o", "cartValue": 2e12, "itemCount": 2e9}}),
    ] {
        let (status, body) = app.post_event(&event).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(
            out_of_range_fields(&body["details"]),
            vec!["metadata.cartValue", "metadata.itemCount"]
        );
    }
    let coupon = json!({"userId": "u", "eventType": "coupon_applied",
        "metadata": {"couponCode": "SAVE", "discount": 1e13}});
    let (status, body) = app.post_event(&coupon).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        out_of_range_fields(&body["details"]),
        vec!["metadata.discount"]
    );
}

#[tokio::test]
async fn a_batch_rejects_only_the_event_past_a_bound() {
    let app = TestApp::spawn().await;
    let good = item_added(&unique("ok"));
    let body = format!(
        r#"{{"events":[{good},{}]}}"#,
        raw_item_added(&unique("big"), "quantity", "1e308")
    );
    let (status, answer) = post_raw(&app, "/events/batch", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["rejected"], 1);
    assert_eq!(
        out_of_range_fields(&answer["results"][1]["errors"]),
        vec!["metadata.quantity"]
    );
}

#[tokio::test]
async fn numbers_past_their_bounds_are_out_of_range_over_websocket() {
    let app = TestApp::spawn().await;
    let (mut ws, _) = app.ws().await;
    let event = raw_item_added(&unique("ws-big"), "quantity", "1e308");
    let message = format!(r#"{{"type":"cart_event","requestId":"r-1","data":{event}}}"#);
    ws.send(tokio_tungstenite::tungstenite::Message::text(message))
        .await
        .unwrap();
    let reply = recv_json(&mut ws).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["requestId"], "r-1");
    assert_eq!(reply["code"], "validation_failed");
    assert_eq!(
        out_of_range_fields(&reply["details"]),
        vec!["metadata.quantity"]
    );
    // In a batch message, only the event past the bound is rejected.
    let mut big_price = item_added(&unique("ws-price"));
    big_price["metadata"]["price"] = json!(1e13);
    let batch = json!({"type": "cart_event_batch", "requestId": "r-2",
        "data": [item_added(&unique("ws-ok")), big_price]});
    send_json(&mut ws, &batch).await;
    let reply = recv_json(&mut ws).await;
    assert_eq!(reply["type"], "batch_ack", "{reply}");
    assert_eq!(reply["accepted"], 1);
    assert_eq!(reply["rejected"], 1);
    assert_eq!(
        out_of_range_fields(&reply["results"][1]["errors"]),
        vec!["metadata.price"]
    );
}
