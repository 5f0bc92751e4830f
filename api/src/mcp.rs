//! The knowledge base over the Model Context Protocol (rmcp): `rag mcp`
//! on stdio, and `/mcp` on `rag serve` (streamable HTTP). Two tools:
//! `search` (passages) and `ask` (the checked answer with its citations).
//!
//! Over HTTP each request is authenticated like any other (the `auth`
//! middleware puts the key's [`Caller`] in the request), and each tool call
//! takes the caller of the request that carries it, so a session id
//! presented with another key still sees only that key's groups. On stdio
//! the caller is the local user, as for the CLI, or the groups `rag mcp
//! --group` gives.

use std::sync::Arc;

use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::json;

use crate::app::{App, Query};
use crate::http::MAX_K;
use crate::keys::Caller;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SearchArgs {
    /// What to look for, in words.
    pub query: String,
    /// How many passages (1-50; the configured number when absent).
    pub k: Option<usize>,
    /// Only this collection.
    pub collection: Option<String>,
    /// Only passages with any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AskArgs {
    /// The question, in words.
    pub question: String,
    /// Only this collection.
    pub collection: Option<String>,
}

/// The MCP server: the app and, on stdio, the fixed caller.
#[derive(Clone)]
pub struct KnowledgeBase {
    app: Arc<App>,
    /// The caller on stdio; `None` over HTTP (each request's own).
    local: Option<Arc<Caller>>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl KnowledgeBase {
    pub fn new(app: Arc<App>, local: Option<Arc<Caller>>) -> Self {
        Self {
            app,
            local,
            tool_router: Self::tool_router(),
        }
    }

    /// The caller of this request: the key the HTTP request presented, or
    /// the stdio user. A request without one (which the router does not
    /// let through) sees nothing.
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Arc<Caller>, McpError> {
        if let Some(local) = &self.local {
            return Ok(local.clone());
        }
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Arc<Caller>>())
            .cloned()
            .ok_or_else(|| McpError::invalid_request("no API key on this request", None))
    }

    #[tool(
        description = "Search the company's documents: the passages that best match the query, each with its source, title, heading, web address (url) when it has one, and text. Only documents the caller's groups may see."
    )]
    async fn search(
        &self,
        Parameters(args): Parameters<SearchArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&ctx)?;
        if args.query.trim().is_empty() {
            return Ok(refused("`query` is empty: say what to look for"));
        }
        if let Some(k) = args.k
            && (k == 0 || k > MAX_K)
        {
            return Ok(refused(&format!(
                "k must be between 1 and {MAX_K}, got {k}"
            )));
        }
        let query = Query {
            k: args.k,
            mode: None,
            filter: rag_core::SearchFilter {
                collection: args.collection,
                tags: args.tags,
                groups: caller.groups.clone(),
            },
            sampling: Default::default(),
        };
        let hits = match self.app.retrieve(&args.query, &query).await {
            Ok(hits) => hits,
            Err(e) => return failed(e),
        };
        let passages: Vec<serde_json::Value> = hits
            .iter()
            .map(|h| {
                json!({
                    "rank": h.rank,
                    "source": h.source,
                    "title": h.title,
                    "heading": h.heading,
                    "page": h.page,
                    "url": h.url,
                    "score": h.score,
                    "text": h.text,
                })
            })
            .collect();
        let body = json!({ "passages": passages });
        Ok(CallToolResult::success(vec![ContentBlock::text(
            body.to_string(),
        )]))
    }

    #[tool(
        description = "Answer a question from the company's documents: a checked answer whose every sentence is supported by a cited passage (citations carry source, title, url and the quoted passage), or `abstained: true` when the documents do not say."
    )]
    async fn ask(
        &self,
        Parameters(args): Parameters<AskArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = self.caller(&ctx)?;
        if args.question.trim().is_empty() {
            return Ok(refused("`question` is empty: ask something"));
        }
        let query = Query {
            k: None,
            mode: None,
            filter: rag_core::SearchFilter {
                collection: args.collection,
                tags: vec![],
                groups: caller.groups.clone(),
            },
            sampling: Default::default(),
        };
        let answer = match self.app.ask(&args.question, &query).await {
            Ok(answer) => answer,
            Err(e) => return failed(e),
        };
        let id = crate::http::chat::answer_id();
        crate::http::feedback::remember(&self.app, &caller, &id, &args.question, &answer).await;
        let citations: Vec<serde_json::Value> = answer
            .citations
            .iter()
            .map(|c| {
                json!({
                    "n": c.n,
                    "source": c.source,
                    "title": c.title,
                    "page": c.page,
                    "url": c.url,
                    "quote": c.quote,
                })
            })
            .collect();
        let body = json!({
            "answer": answer.answer,
            "abstained": answer.abstained,
            "citations": citations,
            "answer_id": id,
        });
        Ok(CallToolResult::success(vec![ContentBlock::text(
            body.to_string(),
        )]))
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "rag",
    instructions = "The company's documents. `search` returns passages; `ask` returns a checked answer with citations, or says the documents do not cover the question."
)]
impl rmcp::ServerHandler for KnowledgeBase {}

/// A tool call the caller can fix: an error result with the reason.
fn refused(message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.to_string())])
}

/// A call that failed in the service: what the caller can act on (bad
/// input, busy, a backend down) is said; internal detail is logged only.
fn failed(e: rag_core::Error) -> Result<CallToolResult, McpError> {
    use rag_core::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::NotFound | ErrorKind::Conflict => {
            Ok(refused(e.message()))
        }
        ErrorKind::Busy => Ok(refused("too many questions are waiting; retry shortly")),
        ErrorKind::Unavailable => {
            tracing::warn!(error = %e.chain(), "an MCP tool call found a backend down");
            Ok(refused("a backend is unavailable; retry later"))
        }
        ErrorKind::Internal => {
            tracing::error!(error = %e.chain(), "an MCP tool call failed");
            Err(McpError::internal_error("internal error", None))
        }
    }
}

/// `/mcp`: the streamable HTTP service, behind the router's auth. Hosts are
/// checked against loopback only in open mode (a local server a web page
/// could reach by DNS rebinding); with keys, the key is the check.
///
/// Stateless: every request stands alone and carries its caller's key, and
/// no session is kept. rmcp's sessions (`Mcp-Session-Id`) are not bound to
/// the key that opened them, so another key could resume a session's
/// stream (GET with `Last-Event-ID`) or end it (DELETE); the tools are
/// request and response, so nothing needs a session (and protocol
/// 2026-07-28 drops them).
pub fn http_service(
    app: Arc<App>,
    open: bool,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    KnowledgeBase,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let config = StreamableHttpServerConfig::default().with_legacy_session_mode(false);
    let config = if open {
        config
    } else {
        config.disable_allowed_hosts()
    };
    StreamableHttpService::new(
        move || Ok(KnowledgeBase::new(app.clone(), None)),
        LocalSessionManager::default().into(),
        config,
    )
}

/// `rag mcp`: serves on stdin and stdout until the client closes them.
pub async fn serve_stdio(app: Arc<App>, caller: Caller) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let server = KnowledgeBase::new(app, Some(Arc::new(caller)))
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("starting the MCP server on stdio: {e}"))?;
    server
        .waiting()
        .await
        .map_err(|e| anyhow::anyhow!("the MCP session ended with an error: {e}"))?;
    Ok(())
}
