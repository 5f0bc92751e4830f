"""The official `openai` package against `rag serve` backed by
scripted_model.py: each case asked plainly and streamed; prints a JSON list
of {case, content, streamed, answer, abstained, citations}.

    python checked_answers.py BASE_URL CASE...
"""

import json
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0)
questions = {
    "1": "How many sick days do I get?",
    "2": "How many sick days do I get?",
    "3": "Where do I record a sick day?",
    "4": "Where do I record a sick day?",
    "5": "Do I need a doctor's certificate when I am sick for four days?",
    "6": "Do I need a doctor's certificate when I am sick for four days?",
    "7": "How many sick days do I get, and for a sick child?",
    "8": "How many sick days do I get?",
}
out = []
for case in sys.argv[2:]:
    messages = [{"role": "user", "content": f"{questions[case]} (case {case})"}]
    full = client.chat.completions.create(model="rag", messages=messages, temperature=0)
    streamed, last = "", None
    for chunk in client.chat.completions.create(model="rag", messages=messages, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            streamed += chunk.choices[0].delta.content
        last = chunk
    out.append({
        "case": case,
        "content": full.choices[0].message.content,
        "streamed": streamed,
        "answer": last.model_extra["answer"],
        "abstained": full.model_extra["abstained"],
        "citations": full.model_extra["citations"],
        "sentences_dropped": full.usage.model_extra["sentences_dropped"],
    })
print(json.dumps(out))
