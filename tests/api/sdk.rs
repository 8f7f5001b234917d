//! The browser SDK's script served at `/sdk/v1/cartstream.min.js` (issue 16): the committed
//! build, byte for byte, to any page, with or without keys configured.

use crate::helpers::TestApp;

const BUILT: &[u8] = include_bytes!("../../clients/js/dist/cartstream.min.js");

#[tokio::test]
async fn the_sdk_script_is_served_as_built_and_cacheable_without_a_key() {
    let app = TestApp::spawn_with(|s| {
        s.api_keys = vec!["pk-1".into()];
        s.cors_origins = vec!["https://shop.example".into()];
    })
    .await;
    let r = app
        .http
        .get(app.url("/sdk/v1/cartstream.min.js"))
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=3600");
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], BUILT);
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("var cartstream="));

    let r = app
        .http
        .head(app.url("/sdk/v1/cartstream.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = app
        .http
        .post(app.url("/sdk/v1/cartstream.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
}
