"""Qwen-Agent's own tool loop against `qwen35 serve`: Python tools, then the MCP filesystem server.

Qwen-Agent runs in native mode (`use_raw_api: True`, `model_type: "oai"`, streaming): it sends the tools as
OpenAI `tools`, our server's qwen3_coder parser turns the model's `<tool_call>` into streamed `tool_calls`, and
Qwen-Agent runs each call and sends the result back as a `tool` message until the model answers in text. No
`tool_choice` is sent: the model decides to call.

The tasks, phrased like the demo model's training requests (train/synth/api_calls.py, fs_calls.py):
- timer:   "Set a timer for 25 minutes." with two Python tools registered here, `get_weather` and `set_timer`
           (the training catalogue's names and schemas, JSON results shaped like the training data's). Passes
           when set_timer is called with 25 and the final answer says 25.
- files:   'Write "hello" to /tmp/demo-1234/notes.txt, then read the file back and tell me its content.'
           with the MCP filesystem server (`npx -y @modelcontextprotocol/server-filesystem /tmp/demo-1234`, its
           14 tools as `filesystem-write_file`, ...). Passes when write_file then read_text_file were called,
           the file on disk holds the text, and the final answer gives it.
- weather: "What's the weather in Paris?" (`--task weather --city CITY`), not part of `all`, see below.
The demo model (3.9M parameters) copies numbers from a request into its calls, and a few file names and
texts its training data used, but hardly any other word: asked about Paris it calls get_weather for Boston.
Hence a timer, a folder named by digits, and "hello" in notes.txt (write-then-read of that passes for 5 of 6
/tmp/demo-NNNN folders tried, in both thinking modes; "hello world" is mostly written as "hello").

Install: pip install -e '.[agent-example]'   (qwen-agent 0.0.34, mcp<2, and what qwen-agent imports without
         declaring it); Node.js with npx for the MCP server (fetched from npm on first use).
Run:     qwen35 serve --port 8000            # the embedded demo model (greedy); or qwen35 serve /path/to/model
         python examples/qwen_agent_tools.py --base-url http://127.0.0.1:8000/v1
Prints each conversation (reasoning, tool calls, tool results, answer); exit status 0 when every task passed,
1 when one did not, 2 when there is no server. Qwen-Agent may write a `workspace/` folder in the current
directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import urllib.request
import zlib

try:
    from qwen_agent.agents import Assistant
    from qwen_agent.tools.base import BaseTool, register_tool
except ImportError as e:
    sys.exit(f"qwen-agent is missing ({e}): pip install -e '.[agent-example]'")

SYSTEM = "You are a helpful assistant. Use the tools."  # as in the training data's tool conversations
TIMER_MINUTES = 25
FILE_NAME, FILE_TEXT = "notes.txt", "hello"
MCP_PACKAGE = "@modelcontextprotocol/server-filesystem"
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "foggy")


@register_tool("get_weather")
class GetWeather(BaseTool):
    """The demo model's get_weather (train/synth/catalogue.py): same name, description and schema."""

    description = "Get the current weather in a city."
    parameters = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name, e.g. Paris"},
            "unit": {"type": "string", "description": "Temperature unit, celsius by default",
                     "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    }

    def call(self, params: str | dict, **kwargs) -> str:
        args = self._verify_json_format_args(params)
        return json.dumps(weather_report(args["city"], args.get("unit", "celsius")), ensure_ascii=False)


@register_tool("set_timer")
class SetTimer(BaseTool):
    """The demo model's set_timer (train/synth/catalogue.py)."""

    description = "Start a countdown timer."
    parameters = {
        "type": "object",
        "properties": {"minutes": {"type": "integer", "description": "Length of the timer in minutes"}},
        "required": ["minutes"],
    }

    def call(self, params: str | dict, **kwargs) -> str:
        args = self._verify_json_format_args(params)  # validates against the schema: minutes must be an integer
        return json.dumps({"status": "started", "minutes": args["minutes"]})


def weather_report(city: str, unit: str = "celsius") -> dict:
    """A made-up but stable report for `city`, shaped like the training data's tool results."""
    seed = zlib.crc32(city.strip().lower().encode())
    celsius = seed % 30 - 2
    temperature = round(celsius * 9 / 5 + 32) if unit == "fahrenheit" else celsius
    return {"city": city, "temperature": temperature, "unit": unit, "condition": CONDITIONS[seed // 30 % 5]}


def llm_config(base_url: str, model: str, thinking: bool, temperature: float | None, max_tokens: int) -> dict:
    generate_cfg = {
        "use_raw_api": True,  # send `tools`; the server parses the model's calls (no Qwen-Agent tool prompt)
        "extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}},
        "max_tokens": max_tokens,
        "request_timeout": 600,
    }
    if temperature is not None:  # else the server's default (the demo model's generation_config: greedy)
        generate_cfg["temperature"] = temperature
    return {"model": model, "model_type": "oai", "model_server": base_url, "api_key": "EMPTY",
            "generate_cfg": generate_cfg}


def served_model(base_url: str) -> str:
    with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=30) as r:
        return json.load(r)["data"][0]["id"]


def demo_folder(first: int = 1234) -> str:
    """A new folder /tmp/demo-NNNN (a shape from the training data), the first free from `first` on."""
    for n in range(first, 10_000):
        path = f"/tmp/demo-{n:04d}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise RuntimeError("no free /tmp/demo-NNNN folder")


def converse(llm: dict, tools: list, request: str) -> list[dict]:
    """One user request through Qwen-Agent's loop (stream, run the tool calls, repeat); prints the exchange."""
    bot = Assistant(llm=llm, function_list=tools, system_message=SYSTEM)
    print(f"\nuser: {request}", flush=True)
    t0 = time.perf_counter()
    response: list[dict] = []
    for response in bot.run(messages=[{"role": "user", "content": request}]):
        pass  # each step yields the whole response so far; it is printed once complete
    for message in response:
        show(message)
    print(f"({time.perf_counter() - t0:.1f} s, {len(calls(response))} tool calls)")
    return response


def show(message: dict) -> None:
    if message.get("reasoning_content"):
        print(f"  [reasoning] {message['reasoning_content'].strip()}")
    if message.get("function_call"):
        call = message["function_call"]
        print(f"  -> {call['name']}({call['arguments']})")
    elif message["role"] == "function":
        print(f"  <- {message['name']}: {message['content']}")
    elif message.get("content"):
        print(f"assistant: {message['content']}")


def calls(response: list[dict]) -> list[tuple[str, dict | None]]:
    """(name, arguments as a dict, or None when they are not a JSON object) of every tool call, in order."""
    out = []
    for m in response:
        if m.get("function_call"):
            try:
                args = json.loads(m["function_call"]["arguments"])
            except json.JSONDecodeError:
                args = None
            out.append((m["function_call"]["name"], args if isinstance(args, dict) else None))
    return out


def final_answer(response: list[dict]) -> str:
    """The text after the last tool result ("" when the model stopped at a call)."""
    last = max((i for i, m in enumerate(response) if m["role"] == "function"), default=-1)
    return "".join(m.get("content") or "" for m in response[last + 1:]
                   if m["role"] == "assistant" and not m.get("function_call"))


def same(got, want) -> bool:
    """Equal, strings case-insensitively; 25 is not "25" (the schema says integer)."""
    if isinstance(got, str) and isinstance(want, str):
        return got.strip().lower() == want.lower()
    return type(got) is type(want) and got == want


def python_tool_task(llm: dict, request: str, name: str, arguments: dict, answer: str) -> list[str]:
    """The failures of one request to the Python tools (empty: passed): `name` must be called with
    `arguments` (a string compared case-insensitively) and the final answer must contain `answer`."""
    response = converse(llm, ["get_weather", "set_timer"], request)
    made = calls(response)
    failures = []
    if not any(n == name and args is not None and all(same(args.get(k), v) for k, v in arguments.items())
               for n, args in made):
        failures.append(f"no {name} call with {arguments} (calls: {made})")
    elif not any(m["role"] == "function" and m.get("name") == name for m in response):
        failures.append(f"{name} was called but no result came back")
    if answer not in final_answer(response):
        failures.append(f"the final answer does not give {answer!r}")
    return failures


def files_task(llm: dict, root: str, mcp_command: list[str]) -> list[str]:
    """The failures of the MCP write-then-read loop in `root` (empty: passed)."""
    path = os.path.join(root, FILE_NAME)
    server = {"command": mcp_command[0], "args": [*mcp_command[1:], root]}
    request = f'Write "{FILE_TEXT}" to {path}, then read the file back and tell me its content.'
    response = converse(llm, [{"mcpServers": {"filesystem": server}}], request)
    names = [name for name, _ in calls(response)]
    failures = []
    if "filesystem-write_file" not in names:
        failures.append(f"no filesystem-write_file call (calls: {names})")
    elif "filesystem-read_text_file" not in names[names.index("filesystem-write_file"):]:
        failures.append(f"no filesystem-read_text_file call after the write (calls: {names})")
    on_disk = open(path, encoding="utf-8").read() if os.path.exists(path) else None
    print(f"on disk: {path}: {on_disk!r}")
    if on_disk != FILE_TEXT:
        failures.append(f"{path} holds {on_disk!r}, not {FILE_TEXT!r}")
    if FILE_TEXT not in final_answer(response):
        failures.append(f"the final answer does not give the file's content {FILE_TEXT!r}")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's OpenAI base URL")
    p.add_argument("--model", help="model name to send (default: the first one /v1/models lists)")
    p.add_argument("--task", choices=("timer", "files", "weather", "all"), default="all",
                   help="all: timer and files")
    p.add_argument("--city", default="Paris", help="the weather task's city")
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=False,
                   help="chat_template_kwargs.enable_thinking (default: off)")
    p.add_argument("--temperature", type=float, help="sent with every request (default: the server's)")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--root", help="an existing folder for the MCP server (default: a new /tmp/demo-NNNN, removed "
                                  "afterwards)")
    p.add_argument("--mcp-command", default=f"npx -y {MCP_PACKAGE}",
                   help="how to start the MCP filesystem server, before its folder argument")
    args = p.parse_args(argv)
    logging.getLogger("qwen_agent_logger").setLevel(logging.WARNING)  # its INFO lines would interleave
    try:
        model = args.model or served_model(args.base_url)
    except OSError as e:
        print(f"no server at {args.base_url}: {e}", file=sys.stderr)
        return 2
    llm = llm_config(args.base_url, model, args.think, args.temperature, args.max_tokens)
    print(f"server {args.base_url}, model {model!r}, thinking {'on' if args.think else 'off'}")
    failures: dict[str, list[str]] = {}
    if args.task in ("timer", "all"):
        failures["timer"] = python_tool_task(llm, f"Set a timer for {TIMER_MINUTES} minutes.", "set_timer",
                                             {"minutes": TIMER_MINUTES}, str(TIMER_MINUTES))
    if args.task == "weather":
        expected = str(weather_report(args.city)["temperature"])
        failures["weather"] = python_tool_task(llm, f"What's the weather in {args.city}?", "get_weather",
                                               {"city": args.city}, expected)
    if args.task in ("files", "all"):
        root = args.root or demo_folder()
        try:
            failures["files"] = files_task(llm, os.path.realpath(root), args.mcp_command.split())
        finally:
            if not args.root:
                shutil.rmtree(root, ignore_errors=True)
    print()
    for task, problems in failures.items():
        print(f"{task}: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
