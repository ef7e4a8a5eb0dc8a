"""The health gate's verdict for the edgectl_agent role, from edgectl's own rule (edgectl.apply.rollout), so the
Ansible engine and edgectl's own engine judge the agent's timings of the smoke request with the same function.

    {{ edgectl_timings | combine({'text': edgectl_text}) | edgectl_gate_problems(edgectl_smoke) }}
        -> [] when the gate passes, else the reasons (the agent's timings, and the answer's text under 'text')
    {{ edgectl_timings | edgectl_gate_detail }}                    -> 'ttft 4 ms, 80.0 tok/s as timed by the agent'
    {{ edgectl_golden.results | edgectl_answer_problems }}
        -> [] when every golden prompt's answer passes its checks (each result's ``item`` is one of the gate's
           ``more`` prompts, its ``json`` the chat completion), else what missed

Templating runs on the controller, in the environment of edgectl (ansible-playbook comes from it).
"""

from __future__ import annotations


def edgectl_gate_problems(timings, smoke):
    from edgectl.apply.rollout import gate_from_data, gate_problems, smoke_from_timings

    timings = dict(timings or {})
    text = timings.pop("text", None)
    return gate_problems(gate_from_data(smoke), smoke_from_timings(timings or None, text))


def edgectl_gate_detail(timings, smoke=None):
    from edgectl.apply.rollout import gate_detail, gate_from_data, smoke_from_timings

    return gate_detail(smoke_from_timings(timings or None), gate_from_data(smoke) if smoke else None)


def edgectl_answer_problems(results):
    from edgectl.apply.rollout import answer_problems, gate_from_data

    problems = []
    for result in results or []:
        choices = (result.get("json") or {}).get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content") or ""
        problems += answer_problems(gate_from_data(result["item"]), text)
    return problems


class FilterModule:
    def filters(self):
        return {"edgectl_gate_problems": edgectl_gate_problems, "edgectl_gate_detail": edgectl_gate_detail,
                "edgectl_answer_problems": edgectl_answer_problems}
