#!/usr/bin/env python3
"""make_tokenizer_fixtures.py - writes the tokenizer parity fixtures under
tests/fixtures/tokenizer/ from the reference implementations: Hugging Face `tokenizers`
(encode/decode) and `transformers` (apply_chat_template).

Inputs: the Qwen tokenizer (scripts/fetch_tokenizer.sh prints its folder) and the synthetic
tokenizers of tests/fixtures/tokenizer/synthetic/ (make_synthetic_tokenizers.py).
Outputs (all JSON lines, UTF-8):
  encode.jsonl     {"text", "ids"[, "nfc"][, "decoded"]}   Qwen, add_special_tokens=True;
                   "nfc" is NFC(text) when it differs from text, "decoded" is HF's
                   decode(ids) when it differs from NFC(text)
  decode.jsonl     {"ids", "skip_special", "text"}          Qwen decode, lossy UTF-8
  chat.jsonl       {"template", "messages", "add_generation_prompt"[, "enable_thinking"],
                    "text", "ids"}                          transformers' rendering
  fim.jsonl        {"kind": "fim"|"repo", ..., "text", "ids"}
  synthetic.jsonl  {"tokenizer", "text", "add_special", "ids", "decoded", "decoded_skip"}
  qwen2.5-coder/tokenizer_config.json   Qwen2.5-Coder-Instruct's chat template
  info.json        versions and counts
The cases are deterministic (fixed seed). Usage:
  make_tokenizer_fixtures.py --tokenizer-dir DIR --out tests/fixtures/tokenizer
"""
import argparse
import hashlib
import json
import os
import random
import sys
import traceback
import unicodedata

# Qwen2.5-Coder-Instruct's chat_template (the same as Qwen2.5-Instruct's), verbatim.
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

QWEN25_CODER_CONFIG = {
    "add_bos_token": False,
    "add_prefix_space": False,
    "bos_token": None,
    "chat_template": QWEN25_CHAT_TEMPLATE,
    "clean_up_tokenization_spaces": False,
    "eos_token": "<|im_end|>",
    "errors": "replace",
    "model_max_length": 32768,
    "pad_token": "<|endoftext|>",
    "split_special_tokens": False,
    "tokenizer_class": "Qwen2Tokenizer",
    "unk_token": None,
}

# --------------------------------------------------------------------------------------
# Text cases
# --------------------------------------------------------------------------------------

CODE = {
    "c": """#include <stdio.h>
#include <stdlib.h>

/* Sums an array; returns 0 on an empty one. */
static long sum(const int *xs, size_t n) {
    long s = 0;
    for (size_t i = 0; i < n; i++) s += xs[i];
    return s;
}

int main(int argc, char **argv) {
\tint xs[] = {1, 2, 3, 0x1F, -42, 1000000};
\tprintf("%ld\\n", sum(xs, sizeof xs / sizeof xs[0]));
\treturn argc > 1 ? EXIT_FAILURE : EXIT_SUCCESS;
}
""",
    "python": '''import os
from typing import List, Optional


class Tokenizer:
    """A toy tokenizer."""

    def __init__(self, vocab: dict[str, int], unk: Optional[str] = None) -> None:
        self.vocab = vocab
        self.unk = unk

    def encode(self, text: str) -> List[int]:
        # Split on whitespace; don't forget the unknowns!
        return [self.vocab.get(w, -1) for w in text.split()]


if __name__ == "__main__":
    t = Tokenizer({"hello": 1, "world": 2})
    print(t.encode("hello  world\\n"), f"{3.14159:.2f}", 1_000_000, 0b1010, 1e-9)
''',
    "javascript": """// fetch and render
export async function load(url, { retries = 3 } = {}) {
  for (let i = 0; i < retries; ++i) {
    try {
      const res = await fetch(`${url}?page=${i}`);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      return await res.json();
    } catch (e) { console.warn(e?.message ?? e); }
  }
  return null;
}
const arrow = (a, b) => a === b || a !== b && a >= b;
""",
    "rust": """use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Vocab<'a> {
    map: HashMap<&'a str, u32>,
}

impl<'a> Vocab<'a> {
    pub fn get(&self, s: &str) -> Option<u32> { self.map.get(s).copied() }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let v: Vec<u64> = (0..10).map(|x| x * x).filter(|&x| x % 2 == 0).collect();
    println!("{:?} {}", v, v.iter().sum::<u64>());
    Ok(())
}
""",
    "go": """package main

import (
\t"fmt"
\t"strings"
)

func main() {
\twords := strings.Fields("  the quick  brown\\tfox ")
\tfor i, w := range words {
\t\tfmt.Printf("%d:%q\\n", i, w)
\t}
\tch := make(chan int, 4)
\tgo func() { ch <- len(words); close(ch) }()
\tfmt.Println(<-ch)
}
""",
    "java": """public final class Main {
    private static final int MAX = Integer.MAX_VALUE;

    public static void main(String[] args) throws Exception {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 10; i++) {
            sb.append(i).append(i % 3 == 0 ? "Fizz" : "");
        }
        System.out.println(sb.toString() + " " + MAX);
    }
}
""",
    "shell": """#!/usr/bin/env bash
set -euo pipefail
for f in "$@"; do
    if [[ -f "$f" ]]; then
        echo "$(wc -l < "$f") lines in ${f##*/}" >&2
    fi
done
grep -rn --include='*.c' 'TODO' src/ | awk -F: '{print $1}' | sort -u
""",
    "sql": """SELECT u.id, u.name, COUNT(o.id) AS orders
FROM users u
LEFT JOIN orders o ON o.user_id = u.id AND o.created_at >= '2024-01-01'
WHERE u.email LIKE '%@example.com'
GROUP BY u.id, u.name
HAVING COUNT(o.id) > 3
ORDER BY orders DESC
LIMIT 10;
""",
    "html": """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Test &amp; check</title></head>
<body>
  <div class="a b" id='x'>Hello, <b>world</b>!&nbsp;&lt;tag&gt;</div>
  <script>document.getElementById('x').textContent = "hi";</script>
</body>
</html>
""",
    "json": """{"name": "metal-candle", "version": "0.1.0", "deps": ["pcre2", "utf8proc"],
 "nested": {"a": [1, 2.5, -3e10, true, false, null], "s": "esc\\"aped\\\\ \\u00e9"}}
""",
    "makefile": """CC ?= cc
CFLAGS += -O2 -Wall
OBJS := $(patsubst %.c,%.o,$(wildcard src/*.c))

all: libfoo.a
\t@echo done

libfoo.a: $(OBJS)
\t$(AR) rcs $@ $^
""",
    "haskell": """module Main where
import qualified Data.Map as M
main :: IO ()
main = do
  let m = M.fromList [(k, k * 2) | k <- [1..10 :: Int]]
  print $ M.foldr (+) 0 m
""",
    "yaml": """jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: |
          cmake -S . -B build -G Ninja
          ctest --test-dir build --output-on-failure
""",
    "diff": """diff --git a/src/x.c b/src/x.c
--- a/src/x.c
+++ b/src/x.c
@@ -1,3 +1,4 @@
-int x = 1;
+int x = 2;
+int y = 3;
 return x;
""",
    "markdown": """# Title

Some *emphasis*, **bold**, `code`, and a [link](https://example.com/a?b=c&d=e#f).

- item one
- item two

```python
print("fenced")
```
""",
}

SPECIAL_NAMES = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>",
                 "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
                 "<|file_sep|>", "<tool_call>", "</tool_call>", "<think>", "</think>",
                 "<|object_ref_start|>", "<|vision_pad|>", "<|box_end|>"]


def fixed_cases():
    c = []
    add = c.append
    # Source code, whole and line by line, with CRLF and tab variants.
    for lang, src in CODE.items():
        add(src)
        add(src.replace("\n", "\r\n"))
        add(src.replace("    ", "\t"))
        for line in src.split("\n"):
            if line.strip():
                add(line)
    # Whitespace runs.
    for n in list(range(1, 21)) + [31, 32, 33, 64, 100, 257]:
        add(" " * n)
        add("\t" * min(n, 40))
        add("\n" * min(n, 40))
        add("x" + " " * n + "y")
        add(" " * n + "x")
        add("x" + " " * n)
    for s in [" \n", "\n ", " \n ", "\t\n", "\r\n", "\r\n\r\n", "\r", "\r\r\n", "\n\r",
              " \t \t", "a \r\n b", "a\n\n\nb", "a \n\n b", "  \n  \n", "x\t\ty",
              "\u000b", "\u000c", "a\u000bb", "\u001c\u001d\u001e\u001f", "end.   ",
              "   \n\n   x", "if x:\n\tpass\n", "a  b   c    d", " a", "  a", "   a"]:
        add(s)
    # Digits and numbers.
    for s in ["0", "7", "12", "123", "1234", "12345", "1234567890", "3.14159", "-2.5e-10",
              "1,000,000", "1_000_000", "0x1F", "0b1010", "v1.2.3", "2024-01-31T12:34:56Z",
              "$19.99", "50%", "1st 2nd 3rd 4th", "x1y2z3", "\u0663\u0664\u0665",
              "\u00b2\u00b3", "\u2167\u216b", "\uff11\uff12\uff13", "\u0969\u096a", "\u2460\u2461",
              "\u00bd \u00be", "123abc", "abc123", "1.2.3.4", "+1 (555) 010-9999"]:
        add(s)
    # Contractions, mixed case.
    for s in ["I'm", "I'M", "i'M", "don't", "DON'T", "Don'T", "we'll", "WE'LL", "We'Ll",
              "they're", "THEY'RE", "you've", "YOU'VE", "he'd", "HE'D", "it's", "IT'S",
              "It'S", "'s", "'S", "''s", "'''", "'", "rock 'n' roll", "o'clock",
              "the dog's bone", "Dogs' bones", "can't won't shan't", "y'all'd've",
              "\u2019s", "it\u2019s", "'\u017f", "'\u212a", "ma'am", "'re'reRE", "'LL'll",
              "L'Hospital", "'dx", "'tis", "'m'M'mm"]:
        add(s)
    # Scripts.
    for s in ["\u4f60\u597d\uff0c\u4e16\u754c\uff01", "\u6211\u7231\u7f16\u7a0b\u3002\u5b83\u5f88\u6709\u8da3\u3002",
              "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u30ab\u30bf\u30ab\u30ca\u3082\u3002",
              "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4.",
              "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
              "\u0627\u0644\u0644\u063a\u0629 \u0627\u0644\u0639\u0631\u0628\u064a\u0629\u064f \u062c\u0645\u064a\u0644\u0629\u064c",
              "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
              "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01",
              "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u0436", "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5",
              "\u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0", "\u0532\u0561\u0580\u0565\u0582",
              "Stra\u00dfe \u00fcber \u00e4\u00f6\u00fc \u00c4\u00d6\u00dc", "fran\u00e7ais na\u00efve caf\u00e9 r\u00e9sum\u00e9",
              "\u0130stanbul \u0131\u015f\u0131k", "print('\u4f60\u597d')  # \u6ce8\u91ca",
              "def \u51fd\u6570(\u53c2\u6570):\n    return \u53c2\u6570", "mixed\u4e2d\u6587and English\u6df7\u5408"]:
        add(s)
    # Emoji.
    for s in ["\U0001F600", "\U0001F44D\U0001F3FD", "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466",
              "\U0001F3F3\uFE0F\u200D\U0001F308", "\U0001F1EB\U0001F1F7\U0001F1EF\U0001F1F5", "1\uFE0F\u20E3",
              "\u2764\uFE0F", "\U0001F9D1\U0001F3FF\u200D\U0001F4BB", "hi \U0001F44B there", "\U0001F600\U0001F600\U0001F600",
              "\u263A", "\U0001F926\U0001F3FC\u200D\u2642\uFE0F", "code \U0001F680 ship", "\U0001FAE0"]:
        add(s)
    # Combining marks that NFC changes, and canonical reordering.
    for s in ["e\u0301", "cafe\u0301", "A\u030A", "\u212B", "\u2126", "a\u0323\u0307", "a\u0307\u0323",
              "\u1100\u1161\u11A8", "o\u0308\u0304", "\u0041\u0301\u0302", "\u00C5\u0301",
              "n\u0303o", "\u0958", "\u2ADC", "i\u0307", "\u1E0A\u0323", "\u0344",
              "re\u0301sume\u0301", "\u0065\u0301\u0301", "x\u0300", "\u00e9" * 3 + "e\u0301" * 3]:
        add(s)
    # Unicode spaces and invisible characters.
    for s in ["a\u00a0b", "\u00a0", "\u00a0\u00a0x", "x\u00a0\u00a0", "a\u2009b", "a\u202fb",
              "a\u3000b", "\u3000\u3000", "a\u1680b", "a\u2028b", "a\u2029b", "a\u0085b",
              "\u0085", "a\u200bb", "\ufeffbom", "a\u180eb", "a\u2000\u2001\u2002\u2003b",
              "a\u205fb", "x \u00a0 y", "\u00a0\n", "\n\u00a0", "a\u200db", "a\u2060b",
              "tab\u00a0\tmix", " \u3000 "]:
        add(s)
    # Special tokens inline and near misses.
    for name in SPECIAL_NAMES:
        add(name)
        add("a" + name + "b")
        add(" " + name + " ")
        add(name + name)
        add("\n" + name + "\n")
        add(name[:-1])
        add(name[1:])
        add(name.upper())
    for s in ["<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
              "<|im_start|", "<|im_start", "|im_start|>", "<|im_start|>>", "<<|im_start|>",
              "< |im_start|>", "<|im_start |>", "<|im_start|><|im_end|>", "<|endoftext|><|endoftext|>",
              " <|endoftext|> ", "text<|endoftext|>", "<|fim_prefix|>def f():\n<|fim_suffix|>\n    return 1<|fim_middle|>",
              "<|repo_name|>demo\n<|file_sep|>a.py\nx = 1\n", "<think>\nreasoning\n</think>\n\nanswer",
              "<|im_end|", "<||>", "<|>", "<|", "|>", "<|unknown|>", "<|endoftext", "endoftext|>",
              "<|im_start|><|im_start|", "<|<|im_end|>|>", "<|IM_START|>", "<tool_call>{\"a\":1}</tool_call>"]:
        add(s)
    # Miscellaneous.
    for s in ["", "a", "A", " ", "Hello world", "Hello, world!", "hello\nworld", "HELLO WORLD",
              "The quick brown fox jumps over the lazy dog.", "https://example.com/path?q=1&r=two#frag",
              "user@example.com", "C:\\Program Files\\x", "/usr/local/bin/python3", "#!/bin/sh",
              "a" * 1000, "ab" * 500, "abc " * 200, "=" * 80, "-" * 120, "*" * 33, "." * 17,
              "aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQ=" * 8, "deadbeef" * 20, "\x00", "a\x00b",
              "\x01\x02\x03", "\x7f", "\x1b[31mred\x1b[0m", "()[]{}<>", "!!!???...", "\"quoted\"",
              "\u00ab\u00bb\u201c\u201d\u2018\u2019", "\u2014\u2013\u2026", "\\n\\t\\\\", "`~!@#$%^&*_+-=|;:,./?",
              "\U00010348\U00010349", "\U0001D400\U0001D401", "\U00020000\U0002A6D6", "\uffff\ufffd",
              "\U0010FFFD", "\ue000", "supercalifragilisticexpialidocious", "antidisestablishmentarianism" * 3,
              "CamelCaseIdentifierName", "snake_case_identifier_name", "SCREAMING_SNAKE_CASE",
              "kebab-case-name", "x=1;y=2;z=x+y", "a.b.c.d()", "foo->bar->baz", "i++ + ++i",
              "0.1+0.2!=0.3", "\u00bfQu\u00e9 tal?", "\u00a1Hola!"]:
        add(s)
    return c


def random_cases(n, seed):
    rng = random.Random(seed)
    ranges = [((0x20, 0x7e), 30), ((0xa0, 0xff), 5), ((0x100, 0x17f), 5), ((0x370, 0x3ff), 3),
              ((0x400, 0x4ff), 4), ((0x5d0, 0x5ea), 2), ((0x621, 0x64a), 3), ((0x904, 0x939), 2),
              ((0xe01, 0xe3a), 2), ((0x3041, 0x3096), 3), ((0x30a1, 0x30fa), 2), ((0x4e00, 0x9fa5), 6),
              ((0xac00, 0xd7a3), 3), ((0x300, 0x36f), 3), ((0x2000, 0x206f), 2),
              ((0x1f300, 0x1f64f), 3), ((0x1f900, 0x1f9ff), 1), ((0x2190, 0x22ff), 1)]
    spaces = [" ", " ", " ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2009", "\u0085", "  ", "\n\n"]
    total = sum(w for _, w in ranges)
    out = []
    while len(out) < n:
        length = rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 55, 80])
        s = []
        for _ in range(length):
            r = rng.random()
            if r < 0.12:
                s.append(rng.choice(spaces))
            elif r < 0.17:
                s.append(str(rng.randint(0, 99999)))
            elif r < 0.20:
                s.append(rng.choice(["'s", "'T", "'re", "'VE", "'m", "'ll", "'D", "'"]))
            elif r < 0.21:
                s.append(rng.choice(SPECIAL_NAMES))
            else:
                x = rng.random() * total
                for (lo, hi), w in ranges:
                    if x < w:
                        break
                    x -= w
                ch = chr(rng.randint(lo, hi))
                if unicodedata.category(ch) in ("Cn", "Cs", "Co"):
                    continue
                s.append(ch)
        out.append("".join(s))
    return out


def synthetic_texts():
    return ["", "Hello world", "hello  world", " leading", "trailing ", "a\nb\r\nc\td",
            "The quick brown fox jumps over the lazy dog.", "It's what they're doing",
            "int main(void) { return 0; }", "1234567890 3.14159", "   indented   spaced  ",
            "<s>hi</s>", "<s> hi </s>", "a<s>b", "  [MASK]  x", "a [MASK] b", "[MASK]", "x[MASK]y",
            "a <L> b", "a   <L>b", "<L>", "a <R>   b", "<R>", "x<R>\n\ny",
            "word", "a word here", "sword", "words", "word_x", "a word.", "(word)", "\u00e9word",
            "word\u00e9", "\u00e9t\u00e9", "e\u0301te\u0301", "\u00c5ngstr\u00f6m", "A\u030angstr",
            "in inside within", "<|sp ecial|>", "a<|sp ecial|>b", "<pad><pad>", "HelloWorld",
            " HelloWorld", "ignore_merges", "x 123 4567", "\uff21\uff22\uff23 \u2460 \ufb01",
            "caf\u00e9 na\u00efve", "\u4f60\u597d\u4e16\u754c", "\U0001F44D\U0001F3FD ok", "--a--b----c",
            "xxaxxbx", "abcxyz", "<|endoftext|>", "x<|endoftext|>y", "<|begin_of_text|>x<|eot_id|>",
            "UNKNOWN \u00e9\u00e9 chars #$%", "a1b2 c3", "[CLS] x [SEP]", "zzz qqq", "\u00a0\u00a0a"]


# --------------------------------------------------------------------------------------
# Chat conversations
# --------------------------------------------------------------------------------------

def conversations():
    code = "```python\ndef add(a, b):\n    return a + b\n```"
    return [
        [{"role": "user", "content": "Hello"}],
        [{"role": "system", "content": "You are a coder."}, {"role": "user", "content": "Write fizzbuzz in C."}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Add two numbers in Python."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": ""}],
        [{"role": "system", "content": ""}, {"role": "user", "content": "empty system"}],
        [{"role": "user", "content": "\u4f60\u597d\uff0c\u8bf7\u7528\u4e2d\u6587\u56de\u7b54\u3002 \U0001F44D\U0001F3FD caf\u00e9"}],
        [{"role": "user", "content": "Say <|im_end|> literally"}],
        [{"role": "user", "content": "first"}, {"role": "system", "content": "late system"},
         {"role": "user", "content": "second"}],
        [{"role": "user", "content": "What's the weather?"}, {"role": "assistant", "content": "Let me check."},
         {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "{\"rain\": false}"},
         {"role": "user", "content": "Thanks"}],
        [{"role": "assistant", "content": "I start."}],
        [{"role": "user", "content": "Explain:\n" + code}, {"role": "assistant", "content": "It adds.\n" + code},
         {"role": "user", "content": "  trailing spaces  \n\n"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nanswer"}],
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>r1</think>a1"},
         {"role": "user", "content": "q2"}, {"role": "assistant", "content": "\n\nplain a2"}],
        [{"role": "system", "content": "S"}, {"role": "tool", "content": "lonely tool"}],
        [{"role": "user", "content": "line1\r\nline2\ttab"}],
    ]


# --------------------------------------------------------------------------------------
# Reference calls
# --------------------------------------------------------------------------------------

def log(*a):
    print(*a, file=sys.stderr, flush=True)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    log(f"wrote {len(rows)} rows to {path}")


def make_renderer(tok_dir):
    """Returns render(template, messages, add_generation_prompt, **kw) -> (text, how)."""
    import transformers
    tok = None
    how = None
    try:
        from transformers import PreTrainedTokenizerFast
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tok_dir, "tokenizer.json"))
        how = "PreTrainedTokenizerFast"
    except Exception:
        log("PreTrainedTokenizerFast failed:\n" + traceback.format_exc())
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tok_dir)
        how = "AutoTokenizer"

    def render(template, messages, add_generation_prompt, **kw):
        text = tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                       add_generation_prompt=add_generation_prompt, **kw)
        return text

    return render, f"transformers {transformers.__version__} {how}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--synthetic-dir", default=None)
    args = ap.parse_args()
    import tokenizers
    from tokenizers import Tokenizer

    out = args.out
    os.makedirs(out, exist_ok=True)
    tj = os.path.join(args.tokenizer_dir, "tokenizer.json")
    tok = Tokenizer.from_file(tj)
    info = {"tokenizers": tokenizers.__version__, "python": sys.version.split()[0],
            "tokenizer_sha256": hashlib.sha256(open(tj, "rb").read()).hexdigest()}

    # encode.jsonl
    texts = fixed_cases() + random_cases(400, 20250101)
    seen = set()
    rows = []
    for t in texts:
        if t in seen:
            continue
        seen.add(t)
        ids = tok.encode(t, add_special_tokens=True).ids
        row = {"text": t, "ids": ids}
        nfc = unicodedata.normalize("NFC", t)
        if nfc != t:
            row["nfc"] = nfc
        dec = tok.decode(ids, skip_special_tokens=False)
        if dec != nfc:
            row["decoded"] = dec
        rows.append(row)
    write_jsonl(os.path.join(out, "encode.jsonl"), rows)
    info["encode_cases"] = len(rows)

    # decode.jsonl
    rng = random.Random(7)
    b2u = {}
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    k = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    for b, c in zip(bs, cs):
        b2u[b] = chr(c)
    byte_id = {b: tok.token_to_id(b2u[b]) for b in range(256)}
    byte_seqs = [[0xE4], [0xE4, 0xB8], [0xE4, 0xB8, 0xAD], [0xF0, 0x9F, 0x98], [0xF0, 0x9F, 0x98, 0x80],
                 [0xC0, 0x80], [0xC1, 0xBF], [0xED, 0xA0, 0x80], [0xED, 0x9F, 0xBF], [0xF4, 0x90, 0x80, 0x80],
                 [0xF4, 0x8F, 0xBF, 0xBF], [0xF5], [0xFF], [0x80], [0xBF, 0x80], [0xE0, 0x80, 0x80],
                 [0xE0, 0xA0, 0x80], [0xF0, 0x80, 0x80, 0x80], [0xF0, 0x90, 0x80], [0x61, 0xE4, 0x62],
                 [0xE4, 0xB8, 0x61], [0xF0, 0x9F, 0x61, 0x98, 0x80], [0xC3], [0xC3, 0xA9], [0xC3, 0xC3, 0xA9],
                 [0xE2, 0x82], [0xE2, 0x82, 0xAC, 0xE2], [0x00], [0x7F, 0x80, 0x7F]]
    drows = []
    for seq in byte_seqs:
        ids = [byte_id[b] for b in seq]
        drows.append({"ids": ids, "skip_special": False, "text": tok.decode(ids, skip_special_tokens=False)})
    vocab_n = tok.get_vocab_size(with_added_tokens=True)
    for i in range(250):
        n = rng.choice([1, 2, 3, 5, 8, 20])
        ids = [rng.randrange(vocab_n) if rng.random() < 0.9 else rng.randrange(151643, vocab_n)
               for _ in range(n)]
        skip = bool(i % 2)
        drows.append({"ids": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    for t in ["<|im_start|>user\nhi<|im_end|>\n", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
              "x<|endoftext|>y", "<think>t</think>", "<|repo_name|>r\n<|file_sep|>f\n"]:
        ids = tok.encode(t).ids
        for skip in (False, True):
            drows.append({"ids": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    write_jsonl(os.path.join(out, "decode.jsonl"), drows)
    info["decode_cases"] = len(drows)

    # fim.jsonl: the prompt formats metal-candle builds (see src/tok/fim.c).
    frows = []
    fims = [("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"), ("", ""), ("int x = ", ";"),
            ("# \u4e2d\u6587\nx = '", "'\n"), ("a" * 50, "b" * 50), ("<|im_start|>", "\r\n")]
    for p, s in fims:
        text = "<|fim_prefix|>" + p + "<|fim_suffix|>" + s + "<|fim_middle|>"
        frows.append({"kind": "fim", "prefix": p, "suffix": s, "text": text, "ids": tok.encode(text).ids})
    repos = [("library-system", [{"path": "library.py", "content": "class Book:\n    pass\n"},
                                 {"path": "README.md", "content": "# Library"}],
              "main.py", "from library import Book\n", None),
             ("demo", [], "a.c", "int main(void) {\n", "\n}\n"),
             ("x", [{"path": "u.txt", "content": ""}], "v.txt", "", "")]
    for repo, files, path, prefix, suffix in repos:
        text = "<|repo_name|>" + repo + "\n"
        for f in files:
            text += "<|file_sep|>" + f["path"] + "\n" + f["content"] + "\n"
        text += "<|file_sep|>" + path + "\n"
        if suffix is None:
            text += prefix
        else:
            text += "<|fim_prefix|>" + prefix + "<|fim_suffix|>" + suffix + "<|fim_middle|>"
        frows.append({"kind": "repo", "repo": repo, "files": files, "path": path, "prefix": prefix,
                      "suffix": suffix, "text": text, "ids": tok.encode(text).ids})
    write_jsonl(os.path.join(out, "fim.jsonl"), frows)

    # qwen2.5-coder/tokenizer_config.json
    cfg_dir = os.path.join(out, "qwen2.5-coder")
    os.makedirs(cfg_dir, exist_ok=True)
    with open(os.path.join(cfg_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(QWEN25_CODER_CONFIG, f, ensure_ascii=False, indent=2)
        f.write("\n")

    # chat.jsonl
    crows = []
    try:
        render, how = make_renderer(args.tokenizer_dir)
        info["chat_renderer"] = how
        qwen3_template = json.load(open(os.path.join(args.tokenizer_dir, "tokenizer_config.json")))["chat_template"]
        for name, tmpl in [("qwen2.5-coder", QWEN25_CHAT_TEMPLATE), ("qwen3", qwen3_template)]:
            for msgs in conversations():
                for gen in (False, True):
                    variants = [{}]
                    if name == "qwen3" and gen:
                        variants.append({"enable_thinking": False})
                    for kw in variants:
                        try:
                            text = render(tmpl, msgs, gen, **kw)
                        except Exception as e:  # a template may reject a conversation
                            log(f"chat {name} failed on {msgs!r}: {e}")
                            continue
                        row = {"template": name, "messages": msgs, "add_generation_prompt": gen}
                        row.update(kw)
                        row["text"] = text
                        row["ids"] = tok.encode(text, add_special_tokens=False).ids
                        crows.append(row)
    except Exception:
        log("chat fixtures failed:\n" + traceback.format_exc())
    write_jsonl(os.path.join(out, "chat.jsonl"), crows)
    info["chat_cases"] = len(crows)

    # synthetic.jsonl
    srows = []
    sdir = args.synthetic_dir or os.path.join(out, "synthetic")
    for fn in sorted(os.listdir(sdir)):
        if not fn.endswith(".json"):
            continue
        name = fn[:-5]
        try:
            st = Tokenizer.from_file(os.path.join(sdir, fn))
        except Exception as e:
            log(f"synthetic {fn} failed to load: {e}")
            srows.append({"tokenizer": name, "load_error": str(e)})
            continue
        for t in synthetic_texts():
            for add_special in (True, False):
                try:
                    ids = st.encode(t, add_special_tokens=add_special).ids
                except Exception as e:
                    log(f"synthetic {fn} failed on {t!r}: {e}")
                    continue
                srows.append({"tokenizer": name, "text": t, "add_special": add_special, "ids": ids,
                              "decoded": st.decode(ids, skip_special_tokens=False),
                              "decoded_skip": st.decode(ids, skip_special_tokens=True)})
    write_jsonl(os.path.join(out, "synthetic.jsonl"), srows)
    info["synthetic_cases"] = len(srows)

    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    log(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
