//! [`SerdeJson`]: a JSON response documented as `poem_openapi`'s `Json` documents it, written
//! by `serde` straight to bytes.

use poem::{IntoResponse, Response};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::Serialize;

/// A JSON response body with `T`'s schema, written by `T`'s `Serialize`. `Json` writes a
/// `serde_json::Value` tree first (an ordered map per object, its keys hashed with SipHash):
/// for a 100-event batch's results that tree was about 1,200 callgrind instructions per event,
/// and dropping it as many again (BENCHMARKS.md, issue 18). `T`'s `Serialize` must write what
/// its `ToJSON` writes; a test keeps them equal for each type used here.
pub struct SerdeJson<T>(pub T);

impl<T: Type> Payload for SerdeJson<T> {
    const CONTENT_TYPE: &'static str = <Json<T> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + Send> IntoResponse for SerdeJson<T> {
    fn into_response(self) -> Response {
        // The same bytes and headers `Json` answers with, from the same serializer.
        poem::web::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::inbound::wire::{
        BatchItemResult, BatchResult, FieldErrorBody, ItemStatus,
    };
    use poem::http::header;

    /// A batch's results answered through [`SerdeJson`] are the bytes and headers `Json`
    /// answers with: same keys, same order, same escapes, absent fields left out.
    #[tokio::test]
    async fn a_batch_result_is_answered_as_json_answers_it() {
        let result = BatchResult {
            accepted: 1,
            duplicates: 1,
            rejected: 1,
            results: vec![
                BatchItemResult {
                    index: 0,
                    event_id: Some("e-\"1\"\u{1}é".into()),
                    status: ItemStatus::Accepted,
                    errors: None,
                },
                BatchItemResult {
                    index: 1,
                    event_id: Some("e2".into()),
                    status: ItemStatus::Duplicate,
                    errors: None,
                },
                BatchItemResult {
                    index: 2,
                    event_id: None,
                    status: ItemStatus::Rejected,
                    errors: Some(vec![FieldErrorBody {
                        field: "metadata.cartValue".into(),
                        code: "invalid_type".into(),
                        message: "must be a number, not </script>\n".into(),
                    }]),
                },
            ],
        };
        let ours = SerdeJson(result.clone()).into_response();
        let theirs = Json(result).into_response();
        assert_eq!(ours.status(), theirs.status());
        assert_eq!(
            ours.headers().get(header::CONTENT_TYPE),
            theirs.headers().get(header::CONTENT_TYPE)
        );
        let ours = ours.into_body().into_string().await.unwrap();
        let theirs = theirs.into_body().into_string().await.unwrap();
        assert_eq!(ours, theirs);
        assert!(
            ours.contains("\"errors\"") && !ours.contains("null"),
            "{ours}"
        );
    }
}
