//! Handler tests: the router driven in process with `oneshot`, over real
//! stores in a scratch folder and fake models (`rag_core::testing`). What a
//! client sees: statuses, error bodies with request ids, who may see and
//! change what, and a grounded answer through `/v1/ask`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use rag_api::app::App;
use rag_api::config::Settings;
use rag_core::testing::{FakeEmbedder, FakeGenerator};
use rag_core::{DocumentStore, Embedder, Generator, KeyRole, VectorStore};
use rag_ingest::{IngestOptions, Input};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Every word is one token (all unknown to a one-word vocabulary).
fn word_tokenizer() -> tokenizers::Tokenizer {
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
        "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0},"unk_token":"[UNK]"}}"#;
    json.parse().unwrap()
}

struct Fixture {
    app: Arc<App>,
    _dir: tempfile::TempDir,
}

async fn fixture(reply: &'static str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let embedder: Arc<dyn Embedder> = Arc::new(FakeEmbedder::default());
    let vectors: Arc<dyn VectorStore> = Arc::new(
        rag_store::EdgeVectorStore::open(&dir.path().join("vectors"), embedder.dimension())
            .unwrap(),
    );
    let docs: Arc<dyn DocumentStore> = Arc::new(
        rag_store::SqlDocumentStore::connect(&settings.database_url())
            .await
            .unwrap(),
    );
    let generator: Arc<dyn Generator> = Arc::new(FakeGenerator::replying(reply));
    let app = App::from_parts(
        settings,
        embedder,
        word_tokenizer(),
        vectors,
        docs,
        Some(generator),
    );
    Fixture {
        app: Arc::new(app),
        _dir: dir,
    }
}

impl Fixture {
    async fn ingest(&self, source: &str, body: &str, groups: &[&str]) {
        let input = Input::Text {
            source: source.into(),
            title: source.trim_end_matches(".md").into(),
            body: body.into(),
        };
        let options = IngestOptions {
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        };
        let report = self
            .app
            .ingestor()
            .unwrap()
            .ingest_inputs(&[input], &options, &|_| {})
            .await
            .unwrap();
        assert_eq!(report.added, 1, "{report:?}");
    }

    async fn key(&self, role: KeyRole, groups: &[&str]) -> String {
        let groups = groups.iter().map(|g| g.to_string()).collect();
        rag_api::keys::create(self.app.docs.as_ref(), "test", role, groups)
            .await
            .unwrap()
            .0
    }

    /// One request through a fresh router (open: no key needed).
    async fn call(
        &self,
        open: bool,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let router = rag_api::http::router(self.app.clone(), open).unwrap();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1:8080");
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, headers, value)
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_errors_name_it() {
    let f = fixture("unused").await;
    let (status, headers, _) = f.call(true, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-request-id"));

    let (status, headers, body) = f
        .call(true, "POST", "/v1/ask", None, Some(json!({"question": 3})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`question`"), "{body}");
    assert_eq!(
        body["error"]["request_id"].as_str(),
        headers["x-request-id"].to_str().ok()
    );

    let (status, _, body) = f
        .call(
            true,
            "POST",
            "/v1/retrieve",
            None,
            Some(json!({"question": "leave", "k": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("k must be")
    );
}

#[tokio::test]
async fn keys_decide_who_is_heard_and_what_they_may_change() {
    let f = fixture("unused").await;
    let (status, headers, _) = f.call(false, "GET", "/v1/documents", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let (status, _, body) = f
        .call(false, "GET", "/v1/documents", Some("rag_not_a_key"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let reader = f.key(KeyRole::Reader, &[]).await;
    let (status, _, _) = f
        .call(false, "GET", "/v1/documents", Some(&reader), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = f
        .call(false, "POST", "/v1/documents", Some(&reader), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn another_groups_document_does_not_exist_for_a_restricted_key() {
    let f = fixture("unused").await;
    f.ingest(
        "salaries.md",
        "# Salaries\nThe salary bands of 2026.",
        &["hr"],
    )
    .await;
    f.ingest(
        "lunch.md",
        "# Lunch\nThe canteen opens at noon.",
        &["staff"],
    )
    .await;
    let staff = f.key(KeyRole::Uploader, &["staff"]).await;
    let (_, _, listed) = f
        .call(false, "GET", "/v1/documents", Some(&staff), None)
        .await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["documents"][0]["source"], "lunch.md");

    let all = f.app.docs.documents(None).await.unwrap();
    let hr_id = &all.iter().find(|d| d.source == "salaries.md").unwrap().id;
    for method in ["GET", "DELETE"] {
        let (status, _, body) = f
            .call(
                false,
                method,
                &format!("/v1/documents/{hr_id}"),
                Some(&staff),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}: {body}");
    }
    let (_, _, hits) = f
        .call(
            false,
            "POST",
            "/v1/retrieve",
            Some(&staff),
            Some(json!({"question": "salary bands"})),
        )
        .await;
    assert!(
        hits.as_array()
            .unwrap()
            .iter()
            .all(|h| h["source"] != "salaries.md"),
        "{hits}"
    );
}

#[tokio::test]
async fn ask_answers_from_the_documents_and_cites_them() {
    let f = fixture("Employees get 28 days of paid annual leave [1].").await;
    f.ingest(
        "leave.md",
        "# Leave\nEvery employee gets 28 days of paid annual leave per year.",
        &[],
    )
    .await;
    let (status, _, answer) = f
        .call(
            true,
            "POST",
            "/v1/ask",
            None,
            Some(json!({"question": "How many days of paid annual leave?"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["abstained"], false, "{answer}");
    assert_eq!(answer["citations"][0]["source"], "leave.md");
    assert_eq!(answer["citations"][0]["verified"], true);

    // A question the documents do not touch is not sent to the model.
    let (_, _, answer) = f
        .call(
            true,
            "POST",
            "/v1/ask",
            None,
            Some(json!({"question": "parking garage permits"})),
        )
        .await;
    assert_eq!(answer["abstained"], true, "{answer}");
}

#[tokio::test]
async fn answers_are_rated_only_by_the_key_that_asked() {
    let f = fixture("Employees get 28 days of paid annual leave [1].").await;
    f.ingest(
        "leave.md",
        "# Leave\nEvery employee gets 28 days of paid annual leave per year.",
        &["staff"],
    )
    .await;
    let (alice, bob) = (
        f.key(KeyRole::Reader, &["staff"]).await,
        f.key(KeyRole::Reader, &["staff"]).await,
    );
    let question = json!({"question": "How many days of paid annual leave?"});
    let (status, _, answer) = f
        .call(false, "POST", "/v1/ask", Some(&alice), Some(question))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let id = answer["answer_id"].as_str().unwrap().to_string();
    let rate = |rating: &str| json!({"answer_id": id, "rating": rating, "comment": "spot on"});
    let (status, _, body) = f
        .call(false, "POST", "/v1/feedback", Some(&bob), Some(rate("up")))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = f
        .call(
            false,
            "POST",
            "/v1/feedback",
            Some(&alice),
            Some(rate("sideways")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = f
        .call(
            false,
            "POST",
            "/v1/feedback",
            Some(&alice),
            Some(rate("up")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rated = f.app.docs.rated_answers().await.unwrap();
    assert_eq!(rated.len(), 1);
    assert_eq!(rated[0].question, "How many days of paid annual leave?");
    assert_eq!(rated[0].rating.as_deref(), Some("up"));
    assert!(
        rated[0].citations.contains("leave.md"),
        "{}",
        rated[0].citations
    );
    // A chat answer carries it as `answer_id`, the same as OpenAI's `id`.
    let (status, _, chat) = f
        .call(
            false,
            "POST",
            "/v1/chat/completions",
            Some(&alice),
            Some(json!({"model": "rag", "messages": [{"role": "user", "content": "How many days of paid annual leave?"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{chat}");
    assert_eq!(chat["answer_id"], chat["id"], "{chat}");
}

#[tokio::test]
async fn only_admin_keys_manage_sources() {
    let f = fixture("unused").await;
    let reader = f.key(KeyRole::Reader, &["staff"]).await;
    let uploader = f.key(KeyRole::Uploader, &["staff"]).await;
    let admin = f.key(KeyRole::Admin, &[]).await;
    let source = json!({
        "name": "wiki",
        "config": {"kind": "git", "url": "https://git.example/wiki.git", "url_template": "https://git.example/{path}"},
        "groups": ["staff"],
    });
    for key in [&reader, &uploader] {
        let (status, _, body) = f
            .call(
                false,
                "POST",
                "/v1/sources",
                Some(key),
                Some(source.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, _, _) = f.call(false, "GET", "/v1/sources", Some(key), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = f
            .call(false, "POST", "/v1/sources/wiki/sync", Some(key), None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _, body) = f
        .call(
            false,
            "POST",
            "/v1/sources",
            Some(&admin),
            Some(source.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = f
        .call(false, "POST", "/v1/sources", Some(&admin), Some(source))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exists already")
    );
    // Bad settings say what to fix.
    let bad = json!({"name": "site", "config": {"kind": "web", "start_url": "ftp://x.example/"}});
    let (status, _, body) = f
        .call(false, "POST", "/v1/sources", Some(&admin), Some(bad))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("https://"),
        "{body}"
    );
    let (status, _, list) = f
        .call(false, "GET", "/v1/sources", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["name"], "wiki", "{list}");
    assert_eq!(
        list[0]["config"]["url_template"],
        "https://git.example/{path}"
    );
    // `?force` is a boolean; anything else is the caller's mistake.
    let (status, _, _) = f
        .call(
            false,
            "POST",
            "/v1/sources/wiki/sync?force=maybe",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = f
        .call(false, "DELETE", "/v1/sources/wiki", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = f
        .call(false, "POST", "/v1/sources/wiki/sync", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
