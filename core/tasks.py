"""Tasks with checkable answers for pass@k: a generated arithmetic set, or a user's JSONL."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
INSTRUCTION = "\nAnswer briefly and end with the final number."  # appended to a task's question


@dataclass(frozen=True)
class Task:
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        return self.question + INSTRUCTION


def _one_step(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(2, 20), rng.randint(2, 9), 0


def _take_away(rng: random.Random) -> tuple[int, int, int]:
    b = rng.randint(2, 9)
    return b + rng.randint(1, 15), b, 0


def _times(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(2, 9), rng.randint(2, 9), 0


def _two_step(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(12, 60), rng.randint(2, 11), rng.randint(1, 9)


def _boxes(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(2, 12), rng.randint(2, 11), rng.randint(1, 9)


def _sold_twice(rng: random.Random) -> tuple[int, int, int]:
    b, c = rng.randint(2, 11), rng.randint(1, 9)
    return b + c + rng.randint(12, 60), b, c


# (question, numbers, answer): one-step problems first, so a small model solves some of them;
# then two-step ones. Every answer is a non-negative integer.
_TEMPLATES = [
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?",
     _one_step, lambda a, b, c: a + b),
    ("There are {a} birds on a tree and {b} of them fly away. How many birds are left on the tree?",
     _take_away, lambda a, b, c: a - b),
    ("{name} buys {a} bags with {b} sweets in each bag. How many sweets does {name} buy?",
     _times, lambda a, b, c: a * b),
    ("{name} has {a} apples and buys {b} more, then gives away {c}. How many apples does {name} have now?",
     _two_step, lambda a, b, c: a + b - c),
    ("A train travels {a} km in the morning and {b} km in the afternoon. It then goes back {c} km. "
     "How many km is it from where it started?", _two_step, lambda a, b, c: a + b - c),
    ("{name} packs {a} boxes with {b} pencils each and keeps {c} extra pencils. How many pencils is that in all?",
     _boxes, lambda a, b, c: a * b + c),
    ("A shop had {a} cups. It sold {b} cups on Monday and {c} cups on Tuesday. How many cups are left?",
     _sold_twice, lambda a, b, c: a - b - c),
]
_NAMES = ["Ada", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana"]


def arithmetic_tasks(count: int, seed: int = 0) -> list[Task]:
    """``count`` word problems with integer answers, the same for the same seed: the templates
    in turn (three one-step, four two-step), numbers drawn per problem."""
    if not 1 <= count <= 10_000:
        raise ValueError(f"`count` must be from 1 to 10000, but is {count}.")
    rng = random.Random(seed)
    tasks = []
    for i in range(count):
        template, numbers, solve = _TEMPLATES[i % len(_TEMPLATES)]
        a, b, c = numbers(rng)
        tasks.append(Task(template.format(name=rng.choice(_NAMES), a=a, b=b, c=c), str(solve(a, b, c))))
    return tasks


def tasks_from_jsonl(text: str) -> list[Task]:
    """Tasks from JSONL lines with "question" and "answer" fields; errors name the line."""
    tasks = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            question, answer = obj["question"], obj["answer"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"line {i}: need a JSON object with 'question' and 'answer' ({exc}).") from exc
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"line {i}: 'question' must be a non-empty string, not {question!r:.40}.")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise ValueError(f"line {i}: 'answer' must be a number or a non-empty string, not {answer!r:.40}.")
        tasks.append(Task(question, str(answer).strip()))
    if not tasks:
        raise ValueError("The file holds no tasks.")
    return tasks


def final_number(text: str) -> str | None:
    """The last number in a text, without thousands separators ('1,200.' -> '1200')."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def is_correct(text: str, answer: str) -> bool:
    """Numeric answers compare as numbers (last number in the text); others as a case-insensitive substring."""
    got = final_number(text)
    if _NUMBER.fullmatch(answer.replace(",", "")):
        try:
            return got is not None and float(got) == float(answer.replace(",", ""))
        except ValueError:
            return False
    return answer.lower() in text.lower()
