"""The tools samples offer, as OpenAI `tools` entries.

API tools are made up here. The filesystem tools are the 14 of @modelcontextprotocol/server-filesystem 0.2.0
as Qwen-Agent presents them (names prefixed "filesystem-", input schemas cut to type, properties and
required): `filesystem_tools.json` holds the server's tools/list answer, in server order, with those cuts.
`code_interpreter` is the Qwen-Agent example's stand-in (docs: shared/research/agent.md §2.7).
"""

from __future__ import annotations

import json
from importlib import resources


def _function(name: str, description: str, properties: dict, required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def _string(description: str, **extra) -> dict:
    return {"type": "string", "description": description, **extra}


API_TOOLS = {tool["function"]["name"]: tool for tool in (
    _function("get_weather", "Get the current weather in a city.",
              {"city": _string("City name, e.g. Paris"),
               "unit": _string("Temperature unit, celsius by default", enum=["celsius", "fahrenheit"])},
              ["city"]),
    _function("get_time", "Get the current local time in a city.", {"city": _string("City name, e.g. Tokyo")},
              ["city"]),
    _function("convert_currency", "Convert an amount of money from one currency to another.",
              {"amount": {"type": "number", "description": "Amount to convert"},
               "from_currency": _string("ISO 4217 code of the source currency, e.g. USD"),
               "to_currency": _string("ISO 4217 code of the target currency, e.g. EUR")},
              ["amount", "from_currency", "to_currency"]),
    _function("get_stock_price", "Get the latest stock price for a ticker symbol.",
              {"symbol": _string("Ticker symbol, e.g. AAPL")}, ["symbol"]),
    _function("search_web", "Search the web and return the top results.", {"query": _string("Search query")},
              ["query"]),
    _function("send_email", "Send an email.",
              {"to": _string("Recipient email address"), "subject": _string("Subject line"),
               "body": _string("Message text")},
              ["to", "subject", "body"]),
    _function("set_timer", "Start a countdown timer.",
              {"minutes": {"type": "integer", "description": "Length of the timer in minutes"}}, ["minutes"]),
    _function("translate", "Translate text into another language.",
              {"text": _string("Text to translate"),
               "target_language": _string("Language to translate into, e.g. French")},
              ["text", "target_language"]),
    _function("code_interpreter", "Python code sandbox, which can be used to execute Python code.",
              {"code": {"description": "The python code.", "type": "string"}}, ["code"]),
)}

FILESYSTEM_TOOLS = {tool["function"]["name"]: tool for tool in json.loads(
    resources.files(__package__).joinpath("filesystem_tools.json").read_text(encoding="utf-8"))}

TOOLS = {**API_TOOLS, **FILESYSTEM_TOOLS}
