from tinythinker import protocol as P

CHOICES = [{"label": "A", "text": "salt, pepper"}, {"label": "B", "text": "sugar"}, {"label": "C", "text": "ice"}]


def test_question_block_keeps_commas_inside_options():
    block = P.question_block("Which is a spice?", CHOICES)
    assert block == "Which is a spice?\n(A) salt, pepper (B) sugar (C) ice"


def test_stage_prompts_are_byte_exact():
    block = P.question_block("Q?", CHOICES)
    assert P.recall_prompt(block) == "Q?\n(A) salt, pepper (B) sugar (C) ice\nRecall:"
    assert P.analyze_prompt(block, "B", "Spices add flavour.") == (
        "Q?\n(A) salt, pepper (B) sugar (C) ice\nRecall: Spices add flavour.\nAnalyze: For option B,")
    got = P.summarize_prompt(block, "Spices add flavour.", {"C": "ice is frozen.", "A": "it is a spice."})
    assert got == ("Q?\n(A) salt, pepper (B) sugar (C) ice\nRecall: Spices add flavour.\n"
                   "Analyze: For option A, it is a spice. For option C, ice is frozen.\nSummarize:")
    # teacher order on request (spec 9.6), and the ablation shapes of spec 4
    assert P.analyses_text({"C": "c.", "A": "a."}, order=["C", "A"]) == "For option C, c. For option A, a."
    assert P.summarize_prompt(block) == "Q?\n(A) salt, pepper (B) sugar (C) ice\nSummarize:"
    assert P.summarize_prompt(block, recall="R.") == "Q?\n(A) salt, pepper (B) sugar (C) ice\nRecall: R.\nSummarize:"
    assert P.analyze_prompt(block, "A") == "Q?\n(A) salt, pepper (B) sugar (C) ice\nAnalyze: For option A,"
    assert P.summarize_target("C") == "So the answer is option C."


def test_answer_extraction():
    assert P.extract_answer("So the answer is option C.") == "C"
    assert P.extract_answer("the answer is option B. the answer is option A.") == "B"
    assert P.extract_answer("So the answer is option c.") is None  # case-sensitive, like the original
    assert P.extract_answer("So the answer is option C") is None  # the period is part of the format
    assert P.extract_answer("") is None


def test_close_sentence_and_split_analyses():
    assert P.close_sentence(" it works ") == "it works."
    assert P.close_sentence('he said "yes"') == 'he said "yes"'
    assert P.close_sentence("done.") == "done."
    text = P.analyses_text({"A": "x, for option-like text.", "B": "y."})
    assert P.split_analyses(text) == {"A": "x, for option-like text.", "B": "y."}
