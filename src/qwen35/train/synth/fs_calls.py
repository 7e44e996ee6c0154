"""Scenarios for the MCP filesystem tools, with the result texts server-filesystem 0.2.0 really returns
("Successfully wrote to <path>", the file's text, "[FILE] a.txt\\n[DIR] src", ...).

Besides one-call requests there are the chains the Qwen-Agent example asks for: write a file then read it
back, and compute with code_interpreter, write the number, read it back.
"""

from __future__ import annotations

import datetime
import random

from .api_calls import code_call, expression
from .lang import obj, say
from .sample import ToolCall
from .scenario import Scenario

WRITE, READ = "filesystem-write_file", "filesystem-read_text_file"
FILES = ("notes.txt", "todo.txt", "result.txt", "hello.txt", "data.csv", "report.md", "log.txt", "config.json",
         "readme.md", "poem.txt", "answer.txt", "note.txt", "list.txt", "draft.md", "summary.txt")
FOLDERS = ("docs", "notes", "data", "projects", "reports", "backup", "src", "images", "archive")
TEXTS = {
    "en": ("hello", "hello world", "buy milk", "meeting at 3 pm", "remember to call Anna", "The quick brown fox",
           "TODO: water the plants", "version 1.2.0", "done", "all tests passed", "dinner at 7", "first draft"),
    "zh": ("你好", "明天开会", "买牛奶", "完成了", "你好，世界"),
    "ko": ("안녕하세요", "내일 회의", "우유 사기", "완료", "안녕, 세상"),
}
LINES = ("buy milk", "call mom", "fix the bike", "pay rent", "read a book", "water the plants", "book flights",
         "clean the kitchen")
TMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def folder(rng: random.Random) -> str:
    """A directory the MCP server may touch: a test's temp dir or a user's folder."""
    kind = rng.randrange(5)
    if kind == 0:
        return f"/tmp/tmp{''.join(rng.choices(TMP_CHARS, k=8))}"  # tempfile.mkdtemp()
    if kind == 1:
        return f"/home/user/{rng.choice(FOLDERS)}"
    if kind == 2:
        return f"/workspace/{rng.choice(FOLDERS)}"
    return f"/tmp/{rng.choice(('qa', 'demo'))}-{rng.getrandbits(16):04x}"


def file_path(rng: random.Random) -> str:
    return f"{folder(rng)}/{rng.choice(FILES)}"


def text(rng: random.Random, lang: str) -> str:
    """What a user asks to write: a short note or a number."""
    if rng.random() < 0.25:
        return str(rng.randint(0, 9999))
    return rng.choice(TEXTS[lang] if lang != "en" and rng.random() < 0.5 else TEXTS["en"])


def write_call(path: str, content: str) -> ToolCall:
    return ToolCall(WRITE, {"path": path, "content": content}, f"Successfully wrote to {path}")


def read_call(path: str, content: str) -> ToolCall:
    return ToolCall(READ, {"path": path}, content)


WRITE_ASKS = {
    "en": ('Write "{text}" to {path}.', 'Create the file {path} with the content "{text}".',
           'Save "{text}" in {path}.', 'Please write the text "{text}" into {path}.'),
    "zh": ('把"{text}"写入 {path}。', '创建文件 {path}，内容是"{text}"。'),
    "ko": ('{path} 파일에 "{text}"라고 써 주세요.', '"{text}" 내용으로 {path} 파일을 만들어 주세요.'),
}
WRITE_REPLY = {"en": 'I wrote "{text}" to {path}.', "zh": '已将"{text}"写入 {path}。',
               "ko": '{path} 파일에 "{text}" 내용을 저장했습니다.'}


def write(rng: random.Random, lang: str) -> Scenario:
    path, content = file_path(rng), text(rng, lang)
    return Scenario(say(rng, lang, WRITE_ASKS, text=content, path=path), (write_call(path, content),),
                    (f"The user wants {path} written, so I call {WRITE}.", f"{WRITE} says the file was written."),
                    WRITE_REPLY[lang].format(text=content, path=path), path)


READ_ASKS = {
    "en": ("Read {path}.", "What is in the file {path}?", "Show me the content of {path}.",
           "Read the file {path} and tell me what it says."),
    "zh": ("读取 {path}。", "{path} 里面写了什么？"),
    "ko": ("{path} 파일을 읽어 주세요.", "{path}에 뭐가 적혀 있어요?"),
}
READ_REPLY = {"en": '{path} contains "{text}".', "zh": '{path} 的内容是"{text}"。', "ko": '{path} 파일의 내용은 "{text}"입니다.'}
HEAD_ASKS = {
    "en": ("Read the first {n} lines of {path}.", "Show the first {n} lines of {path}."),
    "zh": ("读取 {path} 的前 {n} 行。",),
    "ko": ("{path} 파일의 처음 {n}줄을 읽어 주세요.",),
}
# A head read's lines go in a code fence: the reply then ends a line with "\n" whether more follow or not, and
# decides the end one token later, at the "\n", where the tool result shows what follows the same line (another
# line or `</tool_response>`). Without the fence it had to decide at the line's last token, and a demo run
# stopped three of 33 held-out head reads after the first line (docs/LOG.md, 2026-12-06 next session).
HEAD_INTRO = {"en": "The first {n} lines of {path} are:", "zh": "{path} 的前 {n} 行是：", "ko": "{path} 파일의 처음 {n}줄:"}
HEAD_REPLY = {lang: intro + "\n```\n{text}\n```" for lang, intro in HEAD_INTRO.items()}


def read(rng: random.Random, lang: str) -> Scenario:
    path = file_path(rng)
    reason = f"The user wants to read {path}, so I call {READ}."
    if rng.random() < 0.2:  # only the first lines, with read_text_file's `head`
        lines = rng.sample(LINES, rng.randint(3, 6))
        n = rng.randint(1, len(lines) - 1)
        head = "\n".join(lines[:n])
        call = ToolCall(READ, {"path": path, "head": n}, head)
        return Scenario(say(rng, lang, HEAD_ASKS, n=n, path=path), (call,), (reason, f"{READ} returned {n} lines."),
                        HEAD_REPLY[lang].format(n=n, path=path, text=head), head)
    content = text(rng, lang)
    return Scenario(say(rng, lang, READ_ASKS, path=path), (read_call(path, content),),
                    (reason, f"{READ} returned \"{content}\"."), READ_REPLY[lang].format(path=path, text=content),
                    content)


LIST_ASKS = {
    "en": ("List the files in {path}.", "What is in the folder {path}?",
           "Show me the contents of the directory {path}."),
    "zh": ("列出 {path} 里的文件。", "{path} 目录里有什么？"),
    "ko": ("{path} 폴더에 뭐가 있어요?", "{path} 디렉터리 목록을 보여 주세요."),
}
LIST_REPLY = {"en": "{path} contains: {items}.", "zh": "{path} 中有：{items}。", "ko": "{path} 폴더 내용: {items}."}
DIR_MARK = {"en": " (folder)", "zh": "（文件夹）", "ko": "(폴더)"}


def listing(rng: random.Random, lang: str, ordered: bool = True) -> Scenario:
    """`ordered`: the entries sorted by name, as the server lists them (Node's readdir sorts); training also
    shows them unsorted (synth/tools.py, `TRAINING_STAND_INS`)."""
    path = folder(rng)
    entries = rng.sample(FILES + FOLDERS, rng.randint(1, 4))
    if ordered:
        entries.sort()
    result = "\n".join(f"[DIR] {e}" if e in FOLDERS else f"[FILE] {e}" for e in entries)
    items = ("、" if lang == "zh" else ", ").join(e + DIR_MARK[lang] if e in FOLDERS else e for e in entries)
    name = "filesystem-list_directory"
    return Scenario(say(rng, lang, LIST_ASKS, path=path), (ToolCall(name, {"path": path}, result),),
                    (f"The user wants the contents of {path}, so I call {name}.",
                     f"{name} returned {len(entries)} entries."),
                    LIST_REPLY[lang].format(path=path, items=items), entries[0])


MKDIR_ASKS = {
    "en": ("Create a directory {path}.", "Make a new folder at {path}.", "Create the folder {path}."),
    "zh": ("创建目录 {path}。", "新建文件夹 {path}。"),
    "ko": ("{path} 폴더를 만들어 주세요.",),
}
MKDIR_REPLY = {"en": "The directory {path} has been created.", "zh": "目录 {path} 已创建。", "ko": "{path} 폴더를 만들었습니다."}


def mkdir(rng: random.Random, lang: str) -> Scenario:
    path, name = f"{folder(rng)}/{rng.choice(FOLDERS)}", "filesystem-create_directory"
    call = ToolCall(name, {"path": path}, f"Successfully created directory {path}")
    return Scenario(say(rng, lang, MKDIR_ASKS, path=path), (call,),
                    (f"The user wants the folder {path}, so I call {name}.", f"{name} says the folder exists now."),
                    MKDIR_REPLY[lang].format(path=path), path)


INFO_ASKS = {
    "en": ("How big is {path}?", "Get info about {path}.", "What is the size of {path}?"),
    "zh": ("{path} 有多大？", "查看 {path} 的文件信息。"),
    "ko": ("{path} 파일 크기가 얼마예요?", "{path} 파일 정보를 알려 주세요."),
}
INFO_REPLY = {"en": "{path} is {size} bytes.", "zh": "{path} 的大小是 {size} 字节。", "ko": "{path} 파일 크기는 {size}바이트입니다."}


def js_date(moment: datetime.datetime) -> str:
    """A time as JavaScript's Date.toString() writes it in UTC."""
    return moment.strftime("%a %b %d %Y %H:%M:%S") + " GMT+0000 (Coordinated Universal Time)"


def info(rng: random.Random, lang: str) -> Scenario:
    path, size, name = file_path(rng), rng.randint(1, 50_000), "filesystem-get_file_info"
    created = datetime.datetime(2025, 1, 1) + datetime.timedelta(seconds=rng.randint(0, 600 * 86_400))
    modified = created + datetime.timedelta(seconds=rng.randint(0, 30 * 86_400))
    result = (f"size: {size}\ncreated: {js_date(created)}\nmodified: {js_date(modified)}\n"
              f"accessed: {js_date(modified)}\nisDirectory: false\nisFile: true\npermissions: 644")
    return Scenario(say(rng, lang, INFO_ASKS, path=path), (ToolCall(name, {"path": path}, result),),
                    (f"The user asks about {path}, so I call {name}.", f"{name} says the size is {size}."),
                    INFO_REPLY[lang].format(path=path, size=size), str(size))


MOVE_ASKS = {
    "en": ("Rename {source} to {destination}.", "Move {source} to {destination}."),
    "zh": ("把 {source} 移动到 {destination}。", "将 {source} 重命名为 {destination}。"),
    "ko": ("{source} 파일을 {destination} 위치로 옮겨 주세요.",),
}
MOVE_REPLY = {"en": "Moved {source} to {destination}.", "zh": "已将 {source} 移动到 {destination}。",
              "ko": "{source} 파일을 {destination} 위치로 옮겼습니다."}


def move(rng: random.Random, lang: str) -> Scenario:
    root, name = folder(rng), "filesystem-move_file"
    source_name, target_name = rng.sample(FILES, 2)
    source = f"{root}/{source_name}"
    destination = f"{root}/{rng.choice(FOLDERS)}/{source_name}" if rng.random() < 0.5 else f"{root}/{target_name}"
    call = ToolCall(name, {"source": source, "destination": destination},
                    f"Successfully moved {source} to {destination}")
    return Scenario(say(rng, lang, MOVE_ASKS, source=source, destination=destination), (call,),
                    (f"The user wants {source} moved, so I call {name}.", f"{name} says the file was moved."),
                    MOVE_REPLY[lang].format(source=source, destination=destination), destination)


FIND_ASKS = {
    "en": ("Find all {ext} files in {path}.", "Search {path} for {ext} files."),
    "zh": ("在 {path} 中查找所有 {ext} 文件。",),
    "ko": ("{path}에서 {ext} 파일을 모두 찾아 주세요.",),
}
FIND_REPLY = {"en": "Found: {items}.", "zh": "找到：{items}。", "ko": "찾은 파일: {items}."}


def find(rng: random.Random, lang: str, ordered: bool = True) -> Scenario:
    """`ordered` as for `listing`."""
    root, name = folder(rng), "filesystem-search_files"
    ext = rng.choice((".txt", ".md", ".csv", ".json"))
    stems = list(dict.fromkeys(f.split(".")[0] for f in rng.sample(FILES, 3)))
    if ordered:
        stems.sort()
    found = [f"{root}/{rng.choice(('', 'docs/', 'notes/'))}{stem}{ext}" for stem in stems]
    call = ToolCall(name, {"path": root, "pattern": f"*{ext}"}, "\n".join(found))
    return Scenario(say(rng, lang, FIND_ASKS, ext=ext, path=root), (call,),
                    (f"The user wants the {ext} files in {root}, so I call {name}.",
                     f"{name} found {len(found)} files."),
                    FIND_REPLY[lang].format(items=("、" if lang == "zh" else ", ").join(found)), found[0])


ALLOWED_ASKS = {
    "en": ("Which directories can you access?", "What folders are you allowed to use?"),
    "zh": ("你可以访问哪些目录？",),
    "ko": ("어떤 폴더에 접근할 수 있어요?",),
}
ALLOWED_REPLY = {"en": "I can access {path}.", "zh": "我可以访问 {path}。", "ko": "{path} 폴더에 접근할 수 있습니다."}


def allowed(rng: random.Random, lang: str) -> Scenario:
    root, name = folder(rng), "filesystem-list_allowed_directories"
    return Scenario(say(rng, lang, ALLOWED_ASKS), (ToolCall(name, {}, f"Allowed directories:\n{root}"),),
                    (f"The user asks which folders I can use, so I call {name}.", f"{name} lists {root}."),
                    ALLOWED_REPLY[lang].format(path=root), root)


ROUND_TRIP_ASKS = {
    "en": ('Write "{text}" to {path} and read it back.',
           'Write "{text}" to {path}, then read the file back and tell me its content.',
           'Save "{text}" in {path} and then show me what the file contains.'),
    "zh": ('把"{text}"写入 {path}，然后读出来给我看。',),
    "ko": ('{path} 파일에 "{text}"라고 쓰고 다시 읽어 주세요.',),
}
ROUND_TRIP_REPLY = {"en": '{path} now contains "{text}".', "zh": '{path} 现在的内容是"{text}"。',
                    "ko": '{path} 파일의 내용은 이제 "{text}"입니다.'}


def write_then_read(rng: random.Random, lang: str) -> Scenario:
    path, content = file_path(rng), text(rng, lang)
    return Scenario(say(rng, lang, ROUND_TRIP_ASKS, text=content, path=path),
                    (write_call(path, content), read_call(path, content)),
                    (f"The user wants {path} written and read back, so I call {WRITE} first.",
                     f"The file is written, so now I read it back with {READ}.",
                     f"The file contains \"{content}\"."),
                    ROUND_TRIP_REPLY[lang].format(path=path, text=content), content)


COMPUTE_WRITE_READ_ASKS = {
    "en": ("Use code_interpreter to compute {expr}, then write just the number to {path} with the filesystem tool, "
           "then read the file back and tell me its content.",
           "Compute {expr} with code_interpreter, save the result to {path}, and read the file back."),
    "zh": ("用 code_interpreter 计算 {expr}，把结果写入 {path}，再读出文件内容告诉我。",),
    "ko": ("code_interpreter로 {expr_obj} 계산하고, 결과를 {path} 파일에 쓴 다음 다시 읽어 주세요.",),
}


def compute_write_read(rng: random.Random, lang: str) -> Scenario:
    expr, value = expression(rng)
    path, number = file_path(rng), str(value)
    return Scenario(say(rng, lang, COMPUTE_WRITE_READ_ASKS, expr=expr, expr_obj=obj(expr), path=path),
                    (code_call(expr, value), write_call(path, number), read_call(path, number)),
                    ("The user wants a computation saved to a file, so I call code_interpreter first.",
                     f"The code printed {value}, so now I write it to {path} with {WRITE}.",
                     f"The file is written, so now I read it back with {READ}.",
                     f"The file contains \"{number}\"."),
                    ROUND_TRIP_REPLY[lang].format(path=path, text=number), number)
