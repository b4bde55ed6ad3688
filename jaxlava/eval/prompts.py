"""Every prompt that the evaluation sends to a judge model, in one place.

All texts here are jaxlava's own paraphrases of the official prompts (spec A2-A4). They keep the parts that the
scoring depends on: the `Rating: N` lines of MMHal-Bench (the parser looks for "rating: N"), the
`[Context] ... [System]` layout of LLaVA-Bench with "two scores on the first line", and the single-letter
output of the MMBench option matcher. They are not the official wording, so judge scores are comparable between
runs scored with these prompts and the same judge model, not digit for digit with the published tables.

Published numbers were made with the official texts (and with gpt-4-0314, which is retired). Where exact text
matters, the CLIs take it from a file that the user supplies: `eval/mmhal.py --judge-template FILE` (a template
with four `{}` slots: image contents, question, human answer, model answer) and `eval/llavabench.py --rules
rule.json` (LLaVA's `table/rule.json`, one of the benchmark's own files).
"""
from __future__ import annotations

# ------------------------------------------------------------------------------------------- MMHal-Bench
# One user message, no system message; str.format slots: image contents, question, human answer, model answer.
MMHAL_TEMPLATE = """You are a fair and careful referee. Grade the answer that a large multimodal model (LMM) gave to \
a question about an image. Judge two things: how informative the answer is, and whether it hallucinates. An \
answer hallucinates when it states something that neither the image nor the earlier conversation shows or \
implies: a wrong object, count, attribute, action or feeling, or any other detail that the image does not back.

Five graded cases show what we mean.

### Case 1:
- Image Contents: Horse, Animal
- Question: How many horses are in the picture?
- Standard Human-Generated Answer: Three horses are standing in the field.
- LMM Response to Evaluate: There are two horses in the picture.
- Analysis: The count is wrong: the picture has three horses, not two.
- Hallucination: Yes.

### Case 2:
- Image Contents: Kitchen appliance, Kettle, Countertop
- Question: What do you see in this photo?
- Standard Human-Generated Answer: A red kettle stands on a stove. Cupboards are on the wall behind it.
- LMM Response to Evaluate: The photo shows a kitchen with a bright red kettle on the stove and wooden \
cupboards on the wall, a tidy and homely scene.
- Analysis: Everything the answer says can be seen in the photo; it invents nothing.
- Hallucination: No.

### Case 3:
- Image Contents: Cat, Couch, Cushion
- Question: Describe the image in detail.
- Standard Human-Generated Answer: A grey cat sleeps on a blue couch, curled up against a striped cushion.
- LMM Response to Evaluate: A grey cat is asleep on a blue couch next to a fireplace, resting its head on a \
striped cushion while the fire keeps the room warm.
- Analysis: There is no fireplace and no fire in the image; the answer made them up.
- Hallucination: Yes.

### Case 4:
- Image Contents: Train, Platform, Person, Sign
- Question: Where was this photo taken?
- Standard Human-Generated Answer: The sign reads "Central Station, Zurich", so this is the main train station \
of Zurich.
- LMM Response to Evaluate: The photo was taken on a train platform. Which city it is cannot be told for sure \
from the image.
- Analysis: The answer misses the city, but it claims nothing false. Saying that something is uncertain, not \
fully answering, or leaving out details of the human answer is not a hallucination.
- Hallucination: No.

### Case 5:
- Image Contents: Person, Roof, Ladder
- Question: What safety problems does this photo show?
- Standard Human-Generated Answer: A worker stands on a steep roof without a harness and could fall.
- LMM Response to Evaluate: The worker on the steep roof wears no harness or other fall protection, so a slip \
could cause a serious fall. The ladder leaning on the gutter is another risk if it is not tied off. Work at \
height normally calls for harnesses, guard rails and a second person nearby, and ignoring these rules causes \
many injuries every year.
- Analysis: The answer is much longer than the human one, but its extra points are general knowledge that \
follows from the scene, not false claims about the image. Such reasoning counts in its favour.
- Hallucination: No.

Now grade the LMM answer below in the same way: compare it with the image contents, the question and the \
standard human-generated answer.

Keep in mind that the human answer states facts but may give no analysis, and that it may not mention every \
object or attribute in the image, so be careful before calling something a hallucination. Detailed analysis or \
reasoning by the LMM is welcome as long as it makes no false claims.

First write a short explanation of your judgement. Then give exactly one rating from this list:
- Rating: 6, very informative with good analysis or reasoning, no hallucination
- Rating: 5, very informative, no hallucination
- Rating: 4, somewhat informative, no hallucination
- Rating: 3, not informative, no hallucination
- Rating: 2, very informative, with hallucination
- Rating: 1, somewhat informative, with hallucination
- Rating: 0, not informative, with hallucination

### Image Contents
{}

### Question
{}

### Standard Human-Generated Answer
{}

### LMM Response to Evaluate
{}
"""

# --------------------------------------------------------------------------------------------- LLaVA-Bench
LLAVABENCH_SYSTEM = "You are a careful and exact assistant who checks how good an answer is."

_LLAVABENCH_BODY = (
    "Please give your feedback on how well two AI assistants answered the user question shown above. The user "
    "asked the question while looking at an image. Instead of the image you are given five sentences that each "
    "describe it, and the bounding box of every object in the scene. A box is written (x1, y1, x2, y2) with "
    "numbers from 0 to 1: the x and y of the top-left corner, then the x and y of the bottom-right corner.\n"
    "{focus}Score each assistant from 1 to 10 for its overall performance, a higher score meaning a better "
    "answer.\n"
    "Write the two scores, for Assistant 1 and Assistant 2 in that order, alone on the first line, separated by "
    "a space. From the next line on, explain your scores thoroughly and without bias, and do not let the order "
    "in which the answers appear sway you.")

# per question category: (role name used in the [Role 1] / [Role 2] headers, rule text)
LLAVABENCH_RULES = {
    "conv": ("Assistant", _LLAVABENCH_BODY.format(
        focus="Rate how helpful, relevant and accurate their answers are, and their level of detail. ")),
    "detail": ("Assistant", _LLAVABENCH_BODY.format(
        focus="Rate how helpful, relevant and accurate their descriptions are, and their level of detail. ")),
    "complex": ("Assistant", _LLAVABENCH_BODY.format(
        focus="Rate how helpful, relevant and accurate their answers are, their level of detail, and how sound "
              "their reasoning is. ")),
}

# ------------------------------------------------------------------------------------------------ MMBench
# str.format slots: question, the option block, the model's answer. `none` is the letter for "no option fits"
# (E in the OpenCompass tool, Z in VLMEvalKit).
MMBENCH_MATCH = (
    "You help me match an answer to the options of a single-choice question. You get a question, its options "
    "and an answer; find the option whose meaning is closest to the answer. If the answer means something "
    "clearly different from every option, output {none}. Output one capital letter and nothing else: the letter "
    "of a valid option, or {none}.\n"
    "Example 1:\n"
    "Question: What is the main object in the image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\n"
    "Example 2:\n"
    "Question: What is the main object in the image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: {none}\n"
    "Example 3:\n"
    "Question: {question}?\nOptions: {options}\nAnswer: {answer}\nYour output: ")


def mmhal_prompt(image_contents: str, question: str, gt_answer: str, model_answer: str,
                 template: str | None = None) -> str:
    return (template or MMHAL_TEMPLATE).format(image_contents, question, gt_answer, model_answer)


def llavabench_user(context: str, question: str, answer1: str, answer2: str, role: str, rule: str) -> str:
    """The judge's user message: the captions and boxes, the question, both answers, then the rule."""
    return (f"[Context]\n{context}\n\n[Question]\n{question}\n\n"
            f"[{role} 1]\n{answer1}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{answer2}\n\n[End of {role} 2]\n\n"
            f"[System]\n{rule}\n\n")


def mmbench_match(question: str, options: str, answer: str, none_letter: str = "E") -> str:
    return MMBENCH_MATCH.format(question=question, options=options, answer=answer, none=none_letter)
