"""spec 3.3 completion checks, one hand-written completion per rule, and the spec 9 defects."""
from collections import Counter

from tinythinker.teacher.parse import analyses, collate_content, filter_answer, is_complete, majority

GOOD = """Key Information: Metal conducts electricity.
Explanations: B is correct. Because copper is a metal
A is incorrect. Because wood is an insulator.
C is incorrect. Because rubber blocks current.
D is incorrect. Because glass does not conduct."""


def one(content, num_options=4, finish="stop"):
    reasons = Counter()
    failures, double, cands = filter_answer([{"content": content, "finish_reason": finish}], num_options, reasons)
    return failures, double, cands, reasons


def test_good_completion_keeps_teacher_order_and_closes_sentences():
    failures, double, cands, _ = one(GOOD)
    assert (failures, double) == (0, False)
    (c,) = cands
    assert c == {"general_knowledge": "Metal conducts electricity.",
                 "prefixes": ["B is correct.", "A is incorrect.", "C is incorrect.", "D is incorrect."],
                 "reasons": ["copper is a metal", "wood is an insulator.", "rubber blocks current.",
                             "glass does not conduct."],
                 "answer": "B"}
    assert analyses(c) == {"B": "copper is a metal.", "A": "wood is an insulator.",
                           "C": "rubber blocks current.", "D": "glass does not conduct."}
    assert list(analyses(c)) == ["B", "A", "C", "D"]
    assert is_complete(c, ["A", "B", "C", "D"])


def test_chat_completion_choice_shape_is_accepted():
    failures, _, cands = filter_answer([{"message": {"content": GOOD}, "finish_reason": "stop"}], 4)
    assert failures == 0 and len(cands) == 1


def test_length_cut_fails_and_asks_to_double_max_tokens_even_if_text_parses():
    failures, double, cands, reasons = one(GOOD, finish="length")
    assert (failures, double, cands) == (1, True, [])
    assert reasons == {"length": 1}


def test_missing_key_information_rejects():
    failures, _, cands, reasons = one(GOOD.replace("Key Information:", "Summary:"))
    assert (failures, cands, reasons) == (1, [], {"no_key_information": 1})


def test_key_information_on_the_same_line_as_explanations_and_blank_lines():
    content = "Key Information: metals conduct Explanations:\n\nB is correct. Because copper is a metal.\n" \
              "A is incorrect. Because wood.\nC is incorrect. Because rubber.\nD is incorrect. Because glass."
    assert collate_content(content)[:2] == ["Key Information: metals conduct",
                                             "Explanations: B is correct. Because copper is a metal."]
    _, _, (c,), _ = one(content)
    assert c["general_knowledge"] == "metals conduct." and c["answer"] == "B" and len(c["prefixes"]) == 4


def test_double_because_is_split_once():  # spec 9 item 3: the original crashed here
    content = GOOD.replace("copper is a metal", "copper conducts, Because electrons move. Because free")
    _, _, (c,), _ = one(content)
    assert c["reasons"][0] == "copper conducts, Because electrons move. Because free"


def test_multi_line_key_information_pushes_an_option_out_and_is_incomplete():
    content = GOOD.replace("Metal conducts electricity.", "Metal conducts electricity.\nWood does not.")
    failures, _, (c,), _ = one(content)
    assert failures == 0 and c["general_knowledge"] == "Metal conducts electricity."
    # "Wood does not." occupies a slot and is skipped, so the last option never gets read.
    assert [p[0] for p in c["prefixes"]] == ["B", "A", "C"]
    assert not is_complete(c, ["A", "B", "C", "D"])


def test_all_incorrect_has_no_declared_answer():
    failures, _, cands, reasons = one(GOOD.replace("B is correct.", "B is incorrect."))
    assert (failures, cands, reasons) == (1, [], {"no_declared_answer": 1})


def test_malformed_prefix_rejects_whole_completion():
    failures, _, cands, reasons = one(GOOD.replace("A is incorrect. Because", "A is incorrect!! Because"))
    assert (failures, cands, reasons) == (1, [], {"malformed_verdict": 1})
    _, _, cands, reasons = one(GOOD.replace("A is incorrect.", "Option A is incorrect."))
    assert reasons == {"malformed_verdict": 1}


def test_although_while_and_comma_delimiters():
    content = GOOD.replace("A is incorrect. Because", "A is incorrect. Although") \
                  .replace("C is incorrect. Because", "C is incorrect. While") \
                  .replace("D is incorrect. Because", "D is incorrect. Because,")
    _, _, (c,), _ = one(content)
    assert c["reasons"][1:] == ["wood is an insulator.", "rubber blocks current.", "glass does not conduct."]


def test_line_without_delimiter_is_skipped_and_incomplete():
    _, _, (c,), _ = one(GOOD.replace("C is incorrect. Because", "C is incorrect since"))
    assert [p[0] for p in c["prefixes"]] == ["B", "A", "D"] and not is_complete(c, list("ABCD"))


def test_last_correct_verdict_wins_and_duplicates_are_incomplete():
    _, _, (c,), _ = one(GOOD.replace("D is incorrect.", "D is correct."))
    assert c["answer"] == "D"
    _, _, (c,), _ = one(GOOD.replace("D is incorrect.", "A is incorrect."))
    assert not is_complete(c, list("ABCD"))  # four verdicts, but A twice and D never


def test_only_num_options_lines_are_read():
    _, _, (c,), _ = one(GOOD + "\nE is correct. Because extra.", num_options=4)
    assert c["answer"] == "B" and len(c["prefixes"]) == 4


def test_counts_over_several_choices():
    choices = [{"content": GOOD, "finish_reason": "stop"}, {"content": "nonsense", "finish_reason": "stop"},
               {"content": GOOD[:40], "finish_reason": "length"}, {"content": None, "finish_reason": "stop"}]
    reasons = Counter()
    failures, double, cands = filter_answer(choices, 4, reasons)
    assert (failures, double, len(cands)) == (3, True, 1)
    assert reasons == {"no_key_information": 2, "length": 1}


def test_majority_ties_go_to_first_seen():
    assert majority(["B", "A", "A", "B"]) == "B"
    assert majority(["C", "A", "A"]) == "A"
    assert majority([]) is None
