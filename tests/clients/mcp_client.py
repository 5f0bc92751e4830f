"""The official MCP Python SDK (`mcp`) against `rag`: over stdio (`rag mcp`,
started by the SDK) and over streamable HTTP (`rag serve` at /mcp, with API
keys). Prints one JSON object with what it saw; the Rust test asserts on it.

Usage:
  mcp_client.py stdio RAG_BINARY DATA_DIR QUERY QUESTION
  mcp_client.py http URL KEY QUERY QUESTION
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

try:  # mcp >= 2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    def http_transport(url, key):
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        return client, streamable_http_client(url, http_client=client)

except ImportError:  # mcp 1.x
    from mcp.client.streamable_http import streamablehttp_client

    def http_transport(url, key):
        return None, streamablehttp_client(url, headers={"Authorization": f"Bearer {key}"})


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


def is_error(result):
    # `is_error` in mcp >= 2, `isError` before.
    return bool(getattr(result, "is_error", getattr(result, "isError", False)))


async def exercise(session, query, question):
    await session.initialize()
    tools = await session.list_tools()
    out = {"tools": sorted(t.name for t in tools.tools)}
    search = await session.call_tool("search", {"query": query, "k": 5})
    out["search_error"] = is_error(search)
    out["search"] = text_of(search) if is_error(search) else json.loads(text_of(search))
    ask = await session.call_tool("ask", {"question": question})
    out["ask_error"] = is_error(ask)
    out["ask"] = text_of(ask) if is_error(ask) else json.loads(text_of(ask))
    empty = await session.call_tool("search", {"query": "  "})
    out["empty_query_error"] = is_error(empty)
    out["empty_query_message"] = text_of(empty)
    return out


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        binary, data_dir, query, question = sys.argv[2:6]
        params = StdioServerParameters(
            command=binary,
            args=["--data-dir", data_dir, "mcp"],
            env={k: v for k, v in os.environ.items() if k.startswith(("RAG_", "CANDLE_", "PATH", "HOME"))},
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                out = await exercise(session, query, question)
    else:
        url, key, query, question = sys.argv[2:6]
        client, transport = http_transport(url, key)
        async with transport as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                out = await exercise(session, query, question)
        if client is not None:
            await client.aclose()
    print(json.dumps(out))


asyncio.run(main())
