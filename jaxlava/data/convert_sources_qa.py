"""Readers of the SFT+ sources (spec llava_rlhf.md §2.3; the official templates were never published, these
are jaxlava's own, documented in docs/data.md):

- `vqav2`: VQA-v2 questions + annotations -> multi-round QA `conversation` records (several questions about one
  image in one conversation, at most `max_turns` rounds each).
- `aokvqa`: A-OKVQA -> multi-round multiple-choice (`mc`) or chain-of-thought (`cot`) `conversation` records, or
  (`ppo`) `ppo_prompt` records with caption_type 2..5 (A..D), length_bonus 1.0 and the answer + rationales as facts.
- `flickr30k`: Flickr30k Entities (Sentences/<id>.txt + Annotations/<id>.xml) -> spotting-captioning records.
"""
from __future__ import annotations

import glob
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Iterator

from jaxlava.data.convert_common import (ConversionError, ImageStore, Item, Options, RecordError, Report, load_json,
                                          require)
from jaxlava.data.templates import IMAGE, SHORT_ANSWER

LETTERS = "ABCD"
MC_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
COT_SUFFIX = "\nExplain your reasoning briefly, then give the correct option's letter."
SPOT_PROMPT = "Describe the image, giving each object's box as [x1,y1,x2,y2] in 0-1 image coordinates."


def coco_names(image_id: int) -> list[str]:
    """Candidate COCO file names of an image id (2017 naming first, then the 2014 train/val names)."""
    return [f"{image_id:012d}.jpg", f"COCO_train2014_{image_id:012d}.jpg", f"COCO_val2014_{image_id:012d}.jpg"]


def multi_round(qas: list[tuple[str, str]]) -> list[dict]:
    """(question, answer) pairs -> LLaVA turns, `<image>` at the start of the first question."""
    turns = []
    for k, (q, a) in enumerate(qas):
        turns += [{"from": "human", "value": (f"{IMAGE}\n{q}" if k == 0 else q)}, {"from": "gpt", "value": a}]
    return turns


def _check_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecordError(f"malformed record: {what} should be an integer, found {v!r}")
    return v


def _grouped(file: str, parsed: list[tuple[int, int, tuple]], images: ImageStore, max_turns: int, make
             ) -> Iterator[Item]:
    """Items of at most `max_turns` parsed QA per image (image order = first appearance).  `parsed` holds
    (record index, image id, payload); `make(image_id, part, image, payloads)` builds the record."""
    if max_turns < 1:
        raise ConversionError(f"--max-turns must be at least 1, got {max_turns}")
    groups: dict[int, list] = {}
    for index, image_id, payload in parsed:
        groups.setdefault(image_id, []).append((index, payload))
    for image_id, members in groups.items():
        for part, start in enumerate(range(0, len(members), max_turns)):
            chunk = members[start:start + max_turns]

            def build(image_id=image_id, part=part, chunk=chunk):
                try:
                    _, image = images.first(coco_names(image_id))
                except RecordError as e:
                    also = f" (questions at indices {[i for i, _ in chunk]})" if len(chunk) > 1 else ""
                    raise RecordError(f"image {image_id}: {e}{also}") from None
                return make(image_id, part, image, [p for _, p in chunk])
            yield Item(file, chunk[0][0], build)


# ------------------------------------------------------------------------------------------------ VQA-v2
def most_common_answer(answers) -> str:
    """The most frequent human answer (ties: the one seen first)."""
    texts = [a["answer"].strip() for a in answers if isinstance(a, dict) and isinstance(a.get("answer"), str)]
    texts = [t for t in texts if t]
    if not texts:
        raise RecordError("no usable human answer")
    return Counter(texts).most_common(1)[0][0]  # most_common keeps first-seen order among equal counts


def read_vqav2(inputs, opts: Options, report: Report):
    qfiles, afiles = [], []
    for path in inputs:
        data = load_json(path, dict, what="VQA-v2 file")
        if "questions" in data:
            if not isinstance(data["questions"], list):
                raise ConversionError(f"{path}: 'questions' should be a JSON list")
            qfiles.append((path, data["questions"]))
        elif "annotations" in data:
            if not isinstance(data["annotations"], list):
                raise ConversionError(f"{path}: 'annotations' should be a JSON list")
            afiles.append((path, data["annotations"]))
        else:
            raise ConversionError(f"{path}: a VQA-v2 file needs the top-level key 'questions' or 'annotations'")
    if not qfiles or not afiles:
        raise ConversionError(f"vqav2 needs a questions file and an annotations file, got {list(inputs)}")
    answers: dict[int, object] = {}
    for _, anns in afiles:
        for a in anns:
            if isinstance(a, dict) and isinstance(a.get("question_id"), int):
                answers[a["question_id"]] = a
    images = ImageStore(opts.image_dir)

    def gen():
        for path, questions in qfiles:
            parsed = []
            for i, q in enumerate(questions):
                try:
                    qid = _check_int(require(q, "question_id", int), "'question_id'")
                    image_id = _check_int(require(q, "image_id", int), "'image_id'")
                    text = require(q, "question", str).strip()
                    if not text:
                        raise RecordError("empty question")
                    ann = answers.get(qid)
                    if ann is None:
                        raise RecordError(f"no annotation for question_id {qid}")
                    try:
                        answer = most_common_answer(ann.get("answers") or [])
                    except RecordError:
                        answer = ann.get("multiple_choice_answer")
                        if not isinstance(answer, str) or not answer.strip():
                            raise RecordError(f"annotation of question_id {qid} has no answer") from None
                    parsed.append((i, image_id, (qid, text + SHORT_ANSWER, answer.strip())))
                except RecordError as e:
                    report.reject(path, i, str(e))

            def make(image_id, part, image, payloads):
                return {"id": f"vqav2_{image_id}_{part}", "image": image, "source": opts.source or "vqav2",
                        "conversations": multi_round([(q, a) for _, q, a in payloads])}
            yield from _grouped(path, parsed, images, opts.max_turns, make)
    return "conversation", gen()


# ------------------------------------------------------------------------------------------------ A-OKVQA
def parse_aokvqa(raw, need_rationale: bool) -> dict:
    qid = require(raw, "question_id", (str, int))
    image_id = _check_int(require(raw, "image_id", int), "'image_id'")
    question = require(raw, "question", str).strip()
    choices = require(raw, "choices", list)
    if len(choices) != 4 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise RecordError("malformed record: 'choices' should be 4 non-empty strings")
    idx = _check_int(require(raw, "correct_choice_idx", int), "'correct_choice_idx'")
    if not 0 <= idx < 4:
        raise RecordError(f"malformed record: 'correct_choice_idx' should be 0..3, found {idx}")
    rats = raw.get("rationales", [])
    if not isinstance(rats, list) or not all(isinstance(r, str) for r in rats):
        raise RecordError("malformed record: 'rationales' should be a list of strings")
    rats = [r.strip() for r in rats if r.strip()]
    if need_rationale and not rats:
        raise RecordError("no rationale (needed by this variant)")
    if not question:
        raise RecordError("empty question")
    return {"qid": str(qid), "image_id": image_id, "question": question, "choices": [c.strip() for c in choices],
            "idx": idx, "rationales": rats}


def mc_question(p: dict, suffix: str = MC_SUFFIX) -> str:
    opts = "".join(f"\n{LETTERS[k]}. {c}" for k, c in enumerate(p["choices"]))
    return p["question"] + opts + suffix


def mc_answer(p: dict) -> str:
    return f"{LETTERS[p['idx']]}. {p['choices'][p['idx']]}"


def cot_answer(p: dict) -> str:
    """The first rationale, then "So the correct option is X. choice" (the PPO checker looks for
    "correct option is X.")."""
    rat = p["rationales"][0]
    rat = rat if rat.endswith((".", "!", "?")) else rat + "."
    return f"{rat[0].upper()}{rat[1:]} So the correct option is {mc_answer(p)}"


def aokvqa_facts(p: dict) -> list[str]:
    return [f"The answer to \"{p['question']}\" is \"{p['choices'][p['idx']]}\"."] + list(p["rationales"])


def read_aokvqa(inputs, opts: Options, report: Report):
    variant = opts.variant
    if variant not in ("mc", "cot", "ppo"):
        raise ConversionError(f"unknown A-OKVQA variant {variant!r}: use mc, cot or ppo")
    datas = [(path, load_json(path, list, what="A-OKVQA file")) for path in inputs]
    images = ImageStore(opts.image_dir)
    source = opts.source or f"aokvqa_{variant}"

    def ppo_build(raw, i):
        p = parse_aokvqa(raw, need_rationale=False)
        _, image = images.first(coco_names(p["image_id"]))
        return {"id": f"aokvqa_{p['qid']}", "image": image, "source": source,
                "conversations": multi_round([(mc_question(p), mc_answer(p))]),
                "caption_type": 2 + p["idx"], "length_bonus": 1.0, "facts": aokvqa_facts(p)}

    def gen():
        for path, data in datas:
            if variant == "ppo":
                for i, raw in enumerate(data):
                    yield Item(path, i, lambda raw=raw, i=i: ppo_build(raw, i))
                continue
            parsed = []
            for i, raw in enumerate(data):
                try:
                    p = parse_aokvqa(raw, need_rationale=variant == "cot")
                except RecordError as e:
                    report.reject(path, i, str(e))
                    continue
                qa = (mc_question(p), mc_answer(p)) if variant == "mc" else (mc_question(p, COT_SUFFIX), cot_answer(p))
                parsed.append((i, p["image_id"], qa))

            def make(image_id, part, image, payloads):
                return {"id": f"aokvqa_{variant}_{image_id}_{part}", "image": image, "source": source,
                        "conversations": multi_round(payloads)}
            yield from _grouped(path, parsed, images, opts.max_turns, make)
    return ("ppo_prompt" if variant == "ppo" else "conversation"), gen()


# ------------------------------------------------------------------------------------------------ Flickr30k
PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^\s\]]+)+)\s+([^\[\]]+)\]")


def parse_boxes(path: str) -> dict[str, list[tuple[float, float, float, float]]]:
    """Annotations/<id>.xml -> {entity id: [normalised (x1, y1, x2, y2), ...]} (entities without a box absent)."""
    try:
        root = ET.parse(path).getroot()
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
    except (ET.ParseError, TypeError, ValueError) as e:
        raise RecordError(f"malformed annotation {path}: {e}") from None
    if w < 1 or h < 1:
        raise RecordError(f"malformed annotation {path}: image size {w}x{h}")
    boxes: dict[str, list] = {}
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue  # <nobndbox>/<scene> entities
        try:
            x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise RecordError(f"malformed annotation {path}: bad <bndbox>") from None
        box = (min(max(x1 / w, 0.0), 1.0), min(max(y1 / h, 0.0), 1.0), min(max(x2 / w, 0.0), 1.0),
               min(max(y2 / h, 0.0), 1.0))
        for name in obj.findall("name"):
            boxes.setdefault((name.text or "").strip(), []).append(box)
    return boxes


def format_boxes(boxes) -> str:
    return "[" + ";".join(",".join(f"{v:.3f}" for v in b) for b in boxes) + "]"


def spotting_caption(line: str, boxes: dict) -> tuple[str, int]:
    """An Entities sentence -> (caption with each boxed phrase followed by its box(es), number of boxed phrases)."""
    n = 0

    def sub(m):
        nonlocal n
        phrase, b = m.group(3).strip(), boxes.get(m.group(1))
        if not b:
            return phrase
        n += 1
        return f"{phrase} {format_boxes(b)}"
    text = PHRASE.sub(sub, line.strip())
    if "[/EN#" in text or re.search(r"\[/|\]", re.sub(r"\[[0-9.,;]+\]", "", text)):
        raise RecordError("malformed sentence: unbalanced phrase brackets")
    text = re.sub(r"\s+([.,!?;:])", r"\1", text).replace(" 's", "'s").strip()
    return (text[:1].upper() + text[1:]), n


def _sentence_files(inputs) -> list[str]:
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "*.txt")))
            if not found:
                raise ConversionError(f"{path}: no Flickr30k Entities sentence files (*.txt) in this folder")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise ConversionError(f"{path}: Flickr30k Entities sentence file or folder not found")
    return files


def read_flickr30k(inputs, opts: Options, report: Report):
    files = _sentence_files(inputs)
    images = ImageStore(opts.image_dir)

    def build(path: str) -> list[dict]:
        image_id = os.path.splitext(os.path.basename(path))[0]
        ann_dir = opts.annotations_dir or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                                                       "Annotations")
        ann = os.path.join(ann_dir, image_id + ".xml")
        if not os.path.isfile(ann):
            raise RecordError(f"missing annotation {ann}")
        boxes = parse_boxes(ann)
        try:
            with open(path, encoding="utf-8") as fh:
                lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise RecordError(f"sentence file is not UTF-8 text ({e})") from None
        if not lines:
            raise RecordError("no sentences")
        caps = []
        for k, ln in enumerate(lines):
            try:
                cap, n = spotting_caption(ln, boxes)
            except RecordError as e:
                raise RecordError(f"sentence {k}: {e}") from None
            if n > 0:
                caps.append((k, cap))
        if not caps:
            raise RecordError("no sentence has a phrase with a box")
        image = images.read(image_id + ".jpg")
        return [{"id": f"flickr30k_{image_id}_{k}", "image": image, "source": opts.source or "flickr30k",
                 "conversations": [{"from": "human", "value": f"{IMAGE}\n{SPOT_PROMPT}"},
                                   {"from": "gpt", "value": cap}]} for k, cap in caps[:max(opts.per_image, 1)]]
    return "conversation", [Item(p, i, lambda p=p: build(p)) for i, p in enumerate(files)]
