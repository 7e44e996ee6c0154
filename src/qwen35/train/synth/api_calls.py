"""Scenarios for the API tools: a request in English, Chinese or Korean carrying the argument values, one call
with those values copied (numbers as numbers), a JSON result, and a reply built from the result.

City names, ticker symbols and currency codes stay in Latin letters in every language, so the call copies
them from the request as written.
"""

from __future__ import annotations

import random

from .lang import obj, say
from .sample import ToolCall
from .scenario import Scenario, as_json

CITIES = ("Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Seoul", "Beijing", "Shanghai", "New York",
          "Sydney", "Toronto", "Cairo", "Moscow", "Dubai", "Singapore", "Bangkok", "Istanbul", "Lisbon", "Vienna",
          "Prague", "Oslo", "Stockholm", "Helsinki", "Dublin", "Amsterdam", "Brussels", "Zurich", "Athens", "Warsaw",
          "Mumbai", "Delhi", "Jakarta", "Hanoi", "Lima", "Mexico City", "Chicago", "Boston", "San Francisco", "Busan",
          "Osaka", "Hong Kong", "Nairobi", "Cape Town", "Buenos Aires", "Vancouver")


# -- get_weather -----------------------------------------------------------------------------------------------
CONDITIONS = {"sunny": ("晴", "맑음"), "cloudy": ("多云", "흐림"), "rainy": ("有雨", "비"), "windy": ("有风", "바람"),
              "foggy": ("有雾", "안개"), "snowy": ("下雪", "눈")}
UNIT_NAMES = {"celsius": ("摄氏度", "섭씨"), "fahrenheit": ("华氏度", "화씨")}
WEATHER_ASKS = {
    "en": ("What's the weather in {city}?", "How is the weather in {city} today?", "What's the weather like in {city}?",
           "Weather in {city}, please.", "Is it warm in {city} right now?", "Check the weather in {city}."),
    "zh": ("{city} 今天天气怎么样？", "{city} 的天气如何？", "查一下 {city} 的天气。"),
    "ko": ("{city} 날씨 어때요?", "{city} 날씨 알려 주세요.", "지금 {city} 날씨는요?"),
}
WEATHER_UNIT_ASKS = {
    "en": ("What's the weather in {city} in {unit}?", "Tell me the temperature in {city} in {unit}.",
           "Weather in {city} in {unit}, please."),
    "zh": ("{city} 的天气怎么样？用{unit}。", "告诉我 {city} 的气温，用{unit}。"),
    "ko": ("{city} 날씨를 {unit}로 알려 주세요.", "{city} 기온을 {unit}로 알려 주세요."),
}
WEATHER_REPLY = {"en": "It is {temp} {symbol} and {condition} in {city}.",
                 "zh": "{city} 现在 {temp} {symbol}，{condition}。", "ko": "{city} 날씨: {temp} {symbol}, {condition}."}


def weather(rng: random.Random, lang: str) -> Scenario:
    city, unit = rng.choice(CITIES), rng.choice((None, None, "celsius", "fahrenheit"))
    celsius = rng.randint(-10, 38)
    condition = rng.choice([c for c in CONDITIONS if c != "snowy" or celsius <= 2])
    temp = round(celsius * 9 / 5 + 32) if unit == "fahrenheit" else celsius
    symbol = "°F" if unit == "fahrenheit" else "°C"
    if unit is None:
        request = say(rng, lang, WEATHER_ASKS, city=city)
    else:
        unit_name = {"en": unit, "zh": UNIT_NAMES[unit][0], "ko": UNIT_NAMES[unit][1]}[lang]
        request = say(rng, lang, WEATHER_UNIT_ASKS, city=city, unit=unit_name)
    arguments = {"city": city} if unit is None else {"city": city, "unit": unit}
    result = as_json({"city": city, "temperature": temp, "unit": unit or "celsius", "condition": condition})
    shown = {"en": condition, "zh": CONDITIONS[condition][0], "ko": CONDITIONS[condition][1]}[lang]
    return Scenario(request, (ToolCall("get_weather", arguments, result),),
                    (f"The user wants the weather in {city}, so I call get_weather.",
                     f"get_weather says {temp} {symbol} and {condition}."),
                    WEATHER_REPLY[lang].format(temp=temp, symbol=symbol, condition=shown, city=city), str(temp))


# -- get_time --------------------------------------------------------------------------------------------------
TIME_ASKS = {
    "en": ("What time is it in {city}?", "What's the local time in {city}?", "Tell me the current time in {city}.",
           "Time in {city}?"),
    "zh": ("{city} 现在几点？", "{city} 现在是什么时间？"),
    "ko": ("{city} 지금 몇 시예요?", "{city} 현재 시간 알려 주세요."),
}
TIME_REPLY = {"en": "It is {time} in {city}.", "zh": "{city} 现在是 {time}。", "ko": "{city} 현재 시각은 {time}입니다."}


def local_time(rng: random.Random, lang: str) -> Scenario:
    city, clock = rng.choice(CITIES), f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    return Scenario(say(rng, lang, TIME_ASKS, city=city),
                    (ToolCall("get_time", {"city": city}, as_json({"city": city, "time": clock})),),
                    (f"The user wants the time in {city}, so I call get_time.", f"get_time says {clock}."),
                    TIME_REPLY[lang].format(time=clock, city=city), clock)


# -- convert_currency ------------------------------------------------------------------------------------------
PER_USD = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "CNY": 7.2, "KRW": 1350.0, "CHF": 0.88, "CAD": 1.36,
           "AUD": 1.52, "INR": 83.0}
CURRENCY_ASKS = {
    "en": ("Convert {amount} {source} to {target}.", "How much is {amount} {source} in {target}?",
           "What is {amount} {source} in {target}?", "Change {amount} {source} into {target}, please."),
    "zh": ("把 {amount} {source} 换成 {target}。", "{amount} {source} 等于多少 {target}？"),
    "ko": ("{amount} {source}, {target} 기준으로 얼마예요?", "{amount} {source} → {target} 환전 금액을 알려 주세요."),
}
CURRENCY_REPLY = {"en": "{amount} {source} is {value} {target}.", "zh": "{amount} {source} 约等于 {value} {target}。",
                  "ko": "{amount} {source} = {value} {target}입니다."}


def currency(rng: random.Random, lang: str) -> Scenario:
    source, target = rng.sample(list(PER_USD), 2)
    if PER_USD[source] > 50:  # yen, won, rupees: amounts in hundreds
        amount = rng.randint(1, 500) * 100
    else:
        amount = rng.randint(1, 5000) if rng.random() < 0.8 else round(rng.uniform(1, 1000), 2)
    value = round(amount / PER_USD[source] * PER_USD[target], 2)
    arguments = {"amount": amount, "from_currency": source, "to_currency": target}
    result = as_json({"amount": amount, "from_currency": source, "to_currency": target, "result": value})
    return Scenario(say(rng, lang, CURRENCY_ASKS, amount=amount, source=source, target=target),
                    (ToolCall("convert_currency", arguments, result),),
                    (f"The user wants {amount} {source} in {target}, so I call convert_currency.",
                     f"convert_currency says {value} {target}."),
                    CURRENCY_REPLY[lang].format(amount=amount, source=source, value=value, target=target), str(value))


# -- get_stock_price -------------------------------------------------------------------------------------------
SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "NVDA", "TSLA", "META", "NFLX", "IBM", "INTC", "AMD", "ORCL", "BABA",
           "TSM", "SONY", "ADBE", "CRM", "PYPL", "UBER", "SHOP", "SAP", "ASML", "KO", "PEP", "DIS", "NKE", "V", "MA",
           "JPM", "WMT", "XOM", "BA")
STOCK_ASKS = {
    "en": ("What's the stock price of {symbol}?", "How much is {symbol} stock trading at?",
           "Get me the current price of {symbol}.", "{symbol} stock price?"),
    "zh": ("{symbol} 的股价是多少？", "查一下 {symbol} 的股价。"),
    "ko": ("{symbol} 주가 얼마예요?", "{symbol} 주가 알려 주세요."),
}
STOCK_REPLY = {"en": "{symbol} is trading at {price} USD.", "zh": "{symbol} 当前股价为 {price} 美元。",
               "ko": "{symbol} 현재 주가는 {price} 달러입니다."}


def stock(rng: random.Random, lang: str) -> Scenario:
    symbol, price = rng.choice(SYMBOLS), round(rng.uniform(5, 900), 2)
    result = as_json({"symbol": symbol, "price": price, "currency": "USD"})
    return Scenario(say(rng, lang, STOCK_ASKS, symbol=symbol),
                    (ToolCall("get_stock_price", {"symbol": symbol}, result),),
                    (f"The user wants the price of {symbol}, so I call get_stock_price.",
                     f"get_stock_price says {price} USD."),
                    STOCK_REPLY[lang].format(symbol=symbol, price=price), str(price))


# -- search_web ------------------------------------------------------------------------------------------------
# Two training queries go on from "how" other than with " to": while every training query of a prefix went on
# one way, the demo model wrote that instead of copying the request ("how to runar panels work" for the held-out
# "how solar panels work"; docs/LOG.md, 2026-12-06 sixth session). They replaced two other training-split
# queries, which kept the held-out draws as they were: a query added or one of the other split redraws them.
QUERIES = {
    "en": ("best hiking trails in Norway", "how to bake sourdough bread", "latest news about the Mars rover",
           "python list comprehension examples", "cheap flights to Tokyo", "how to grow tomatoes on a balcony",
           "history of the Eiffel Tower", "easy vegan dinner recipes", "how solar panels work",
           "tips for learning Korean", "best board games for families", "how to fix a flat bike tire",
           "how volcanoes erupt", "how batteries work", "how to write a cover letter"),
    "zh": ("北京的美食推荐", "如何学习编程", "最新的科技新闻", "上海的旅游景点", "怎么做红烧肉", "如何提高睡眠质量"),
    "ko": ("서울 맛집 추천", "김치찌개 만드는 법", "최신 과학 뉴스", "부산 여행 코스", "영어 공부 방법", "잠을 잘 자는 방법"),
}
TITLES = {"en": ("{q}: a complete guide", "{q} explained", "Everything about {q}"),
          "zh": ("{q}：完整指南", "{q}详解"), "ko": ("{q}: 완벽 가이드", "{q} 총정리")}
SEARCH_ASKS = {
    "en": ("Search the web for {q}.", "Look up {q} online.", "Can you search for {q}?", "Find information about {q}."),
    "zh": ("搜索一下{q}。", "帮我在网上查{q}。"),
    "ko": ("{q} 검색해 주세요.", "인터넷에서 {q} 찾아 주세요."),
}
SEARCH_REPLY = {"en": 'The top result is "{title}" ({url}).', "zh": "最相关的结果是「{title}」（{url}）。",
                "ko": '가장 관련 있는 결과는 "{title}"입니다 ({url}).'}


def search(rng: random.Random, lang: str) -> Scenario:
    query = rng.choice(QUERIES[lang])
    shown = query[0].upper() + query[1:]
    titles = rng.sample(TITLES[lang], 2)
    results = [{"title": t.format(q=shown), "url": f"https://example.com/{rng.getrandbits(32):08x}"} for t in titles]
    top = results[0]
    return Scenario(say(rng, lang, SEARCH_ASKS, q=query),
                    (ToolCall("search_web", {"query": query}, as_json({"results": results})),),
                    (f"The user wants a web search for {query}, so I call search_web.",
                     f"search_web found \"{top['title']}\"."),
                    SEARCH_REPLY[lang].format(title=top["title"], url=top["url"]), top["title"])


# -- send_email ------------------------------------------------------------------------------------------------
NAMES = ("anna", "ben", "chen", "david", "emma", "farah", "george", "hana", "ivan", "julia", "kim", "liam", "mia",
         "noah", "olga", "paul", "sara", "tom", "yuki", "zoe")
DOMAINS = ("example.com", "example.org", "mail.test")
MAILS = {
    "en": (("Lunch", "See you at noon."), ("Meeting moved", "The meeting is now at 3 pm."),
           ("Thanks", "Thank you for your help!"), ("Report", "The report is ready."), ("Hello", "Just saying hi."),
           ("Reminder", "Don't forget the tickets.")),
    "zh": (("午饭", "中午见。"), ("会议改期", "会议改到下午三点。"), ("谢谢", "谢谢你的帮助！")),
    "ko": (("점심", "정오에 봐요."), ("회의 변경", "회의가 오후 3시로 바뀌었어요."), ("감사", "도와줘서 고마워요!")),
}
EMAIL_ASKS = {
    "en": ('Send an email to {to} with the subject "{subject}" and the body "{body}".',
           'Email {to}: subject "{subject}", message "{body}".',
           'Please send {to} an email titled "{subject}" that says "{body}".'),
    "zh": ('给 {to} 发一封邮件，主题是"{subject}"，内容是"{body}"。',),
    "ko": ('{to}에게 이메일을 보내 주세요. 제목은 "{subject}", 내용은 "{body}"입니다.',),
}
EMAIL_REPLY = {"en": "The email to {to} has been sent.", "zh": "邮件已发送给 {to}。", "ko": "{to}에게 이메일을 보냈습니다."}


def email(rng: random.Random, lang: str) -> Scenario:
    to = f"{rng.choice(NAMES)}@{rng.choice(DOMAINS)}"
    subject, body = rng.choice(MAILS[lang])
    arguments = {"to": to, "subject": subject, "body": body}
    return Scenario(say(rng, lang, EMAIL_ASKS, to=to, subject=subject, body=body),
                    (ToolCall("send_email", arguments, as_json({"status": "sent", "to": to})),),
                    (f"The user wants to email {to}, so I call send_email.", "send_email says the email was sent."),
                    EMAIL_REPLY[lang].format(to=to), to)


# -- set_timer -------------------------------------------------------------------------------------------------
TIMER_ASKS = {
    "en": ("Set a timer for {n} {minutes}.", "Start a {n}-minute timer.", "Timer for {n} {minutes}, please.",
           "Can you set a {n}-minute timer?"),
    "zh": ("设一个 {n} 分钟的计时器。", "帮我定时 {n} 分钟。"),
    "ko": ("{n}분 타이머 맞춰 주세요.", "타이머 {n}분 설정해 줘."),
}
TIMER_REPLY = {"en": "Your {n}-minute timer has started.", "zh": "{n} 分钟的计时器已开始。", "ko": "{n}분 타이머를 시작했습니다."}


def timer(rng: random.Random, lang: str) -> Scenario:
    n = rng.randint(1, 120)
    request = say(rng, lang, TIMER_ASKS, n=n, minutes="minute" if n == 1 else "minutes")
    return Scenario(request, (ToolCall("set_timer", {"minutes": n}, as_json({"status": "started", "minutes": n})),),
                    (f"The user wants a {n}-minute timer, so I call set_timer.", "set_timer says the timer started."),
                    TIMER_REPLY[lang].format(n=n), str(n))


# -- translate -------------------------------------------------------------------------------------------------
LANGUAGES = {  # English name: (Chinese, Korean)
    "French": ("法语", "프랑스어"), "Spanish": ("西班牙语", "스페인어"), "German": ("德语", "독일어"),
    "Italian": ("意大利语", "이탈리아어"), "Japanese": ("日语", "일본어"), "Korean": ("韩语", "한국어"),
}
PHRASES = {  # English phrase: translations in LANGUAGES' order
    "good morning": ("bonjour", "buenos días", "guten Morgen", "buongiorno", "おはようございます", "좋은 아침입니다"),
    "thank you": ("merci", "gracias", "danke", "grazie", "ありがとう", "감사합니다"),
    "good night": ("bonne nuit", "buenas noches", "gute Nacht", "buona notte", "おやすみなさい", "안녕히 주무세요"),
    "see you tomorrow": ("à demain", "hasta mañana", "bis morgen", "a domani", "また明日", "내일 봐요"),
    "I love books": ("j'aime les livres", "me encantan los libros", "ich liebe Bücher", "amo i libri",
                     "私は本が大好きです", "나는 책을 좋아해요"),
    "where is the station": ("où est la gare", "dónde está la estación", "wo ist der Bahnhof", "dov'è la stazione",
                             "駅はどこですか", "역이 어디예요"),
    "happy birthday": ("joyeux anniversaire", "feliz cumpleaños", "alles Gute zum Geburtstag", "buon compleanno",
                       "お誕生日おめでとう", "생일 축하해요"),
    "how much is this": ("combien ça coûte", "cuánto cuesta esto", "wie viel kostet das", "quanto costa questo",
                         "これはいくらですか", "이거 얼마예요"),
}
TRANSLATE_ASKS = {
    "en": ('Translate "{text}" into {language}.', 'How do you say "{text}" in {language}?',
           'What is "{text}" in {language}?'),
    "zh": ('把"{text}"翻译成{language}。', '"{text}"用{language}怎么说？'),
    "ko": ('{language}로 "{text}" 번역해 주세요.', '"{text}", {language}로 어떻게 말해요?'),
}
TRANSLATE_REPLY = {"en": 'In {language}, "{text}" is "{translation}".', "zh": '"{text}"的{language}是"{translation}"。',
                   "ko": '"{text}"의 {language} 번역은 "{translation}"입니다.'}


def translate(rng: random.Random, lang: str, faithful: bool = True) -> Scenario:
    """The target language is passed as the request names it ("French", "法语", "프랑스어"). `faithful`: the
    tool returns the phrase's translation; otherwise another phrase's in the same language (training only,
    synth/tools.py `TRAINING_STAND_INS`: the 48 translations can be learnt by heart, and a model that has
    learnt them does not read the result, so it fails on held-out pairs)."""
    text = rng.choice(list(PHRASES))
    english = rng.choice([name for name in LANGUAGES if not (lang == "ko" and name == "Korean")])
    language = {"en": english, "zh": LANGUAGES[english][0], "ko": LANGUAGES[english][1]}[lang]
    translation = PHRASES[text if faithful else rng.choice(list(PHRASES))][list(LANGUAGES).index(english)]
    arguments = {"text": text, "target_language": language}
    return Scenario(say(rng, lang, TRANSLATE_ASKS, text=text, language=language),
                    (ToolCall("translate", arguments, as_json({"translation": translation})),),
                    (f"The user wants \"{text}\" in {english}, so I call translate.",
                     f"translate says \"{translation}\"."),
                    TRANSLATE_REPLY[lang].format(language=language, text=text, translation=translation), translation)


# -- code_interpreter ------------------------------------------------------------------------------------------
CODE_ASKS = {
    "en": ("Use code_interpreter to compute {expr}.", "Run Python to calculate {expr}.",
           "Use the code interpreter to work out {expr}."),
    "zh": ("用 code_interpreter 计算 {expr}。", "运行 Python 算一下 {expr}。"),
    "ko": ("code_interpreter로 {expr_obj} 계산해 주세요.", "파이썬으로 {expr_obj} 계산해 주세요."),
}
CODE_REPLY = {"en": "The result is {value}.", "zh": "结果是 {value}。", "ko": "결과는 {value}입니다."}


def expression(rng: random.Random) -> tuple[str, int]:
    a, op, b = rng.randint(10, 999), rng.choice("+-*"), rng.randint(2, 99)
    return f"{a}{op}{b}", {"+": a + b, "-": a - b, "*": a * b}[op]


def code_call(expr: str, value: int) -> ToolCall:
    """Qwen-Agent's stand-in prints stdout + stderr, stripped."""
    return ToolCall("code_interpreter", {"code": f"print({expr})"}, str(value))


def code(rng: random.Random, lang: str) -> Scenario:
    expr, value = expression(rng)
    return Scenario(say(rng, lang, CODE_ASKS, expr=expr, expr_obj=obj(expr)), (code_call(expr, value),),
                    ("The user asks me to run code, so I call code_interpreter.", f"The code printed {value}."),
                    CODE_REPLY[lang].format(value=value), str(value))
