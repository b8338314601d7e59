"""Template -> LASER category for yizhongw/self-instruct data/finetuning/t0_train_50k/data_per_template.

Rule (laser_fast docs/classifier.md): rewriting/paraphrasing/writing = Generation; classifying a given
item (sentiment, topic, pair equivalence, question type) = Brainstorming; passage + summarise/extract/
answer from it = Extraction; short factual question without context = Factual QA; commonsense /
qualitative / multi-fact puzzles with at most a sentence or two of given facts = Reasoning.
None = skipped (category unclear, question-generation tasks, or completion-style prompts that do not
state the task).
"""
E, G, B, F, R = "Extraction", "Generation", "Brainstorming", "Factual QA", "Reasoning"

def label(t: str):
    fam_rules = [
        # --- skipped: unclear / question generation / bare continuations
        (("adversarial_qa_", "_generate_question"), None),
        (("duorc_", "_generate_question"), None),            # also *_generate_question_by_answer
        (("commonsense_qa_answer_to_question",), None),
        (("cosmos_qa_context_answer_to_question",), None),
        (("cosmos_qa_only_question_answer",), None),          # refers to a missing context
        (("social_i_qa_Generate_the_question_from_the_answer",), None),
        (("dream_generate_first_utterance",), None),
        (("dream_generate_last_utterance",), None),
        (("cnn_dailymail_3_0_0_spice_up_story",), None),
        (("common_gen_Example_prompt",), None),
        (("gigaword_in_a_nutshell",), None),
        (("gigaword_reverse_writing",), None),
        (("xsum_DOC_boils_down_to_simple_idea_that",), None),
        (("imdb_Negation_template_for_positive_and_negative",), None),
        (("yelp_review_full_based_on_that",), None),
        (("yelp_review_full_so_i_would",), None),
        (("yelp_review_full_this_place",), None),
        (("wiki_bio_guess_person",), None),
        (("wiki_qa_",), None),                                 # default for wiki_qa except Direct_Answer (below)
        (("wiqa_what_",), None),                               # missing/first/last step: unclear
        (("trec_fine_grained_",), None),                       # overridden below for the non-empty *_open*
    ]
    # explicit positives first
    explicit = {
        "wiki_qa_Direct_Answer_to_Question": F,
        "trec_fine_grained_open": B, "trec_fine_grained_open_context_first": B,
        "app_reviews_generate_review": G,
        "cnn_dailymail_3_0_0_generate_story": G,
        "multi_news_expand_reverse_task_": G,
        "samsum_Write_a_dialogue_that_match_this_summary": G,
        "dream_answer_to_dialogue": G,
        "duorc_ParaphraseRC_build_story_around_qa": G, "duorc_SelfRC_build_story_around_qa": G,
        "duorc_ParaphraseRC_title_generation": G, "duorc_SelfRC_title_generation": G,
        "quoref_Guess_Title_For_Context": G,
        "glue_mrpc_generate_paraphrase": G, "glue_mrpc_generate_sentence": G,
        "paws_labeled_final_paraphrase_task": G,
        "wiki_bio_who": G,
        "gigaword_TLDR": E,
        "common_gen_sentence_to_concepts": E, "common_gen_topics_from_the_sentence": E,
        "sciq_Direct_Question_Closed_Book_": F, "sciq_Multiple_Choice_Closed_Book_": F,
    }
    if t in explicit:
        return explicit[t]
    for keys, cat in fam_rules:
        if t.startswith(keys[0]) and all(k in t for k in keys[1:]):
            return cat
    families = [
        ("adversarial_qa_", E), ("quoref_", E), ("duorc_", E), ("ropes_", E), ("cosmos_qa_", E),
        ("dream_", E), ("wiki_hop_original_", E), ("sciq_", E), ("wiki_bio_", E),
        ("cnn_dailymail_", E), ("xsum_", E), ("samsum_", E), ("multi_news_", E),
        ("gigaword_", G), ("common_gen_", G),
        ("ag_news_", B), ("dbpedia_14_", B), ("amazon_polarity_", B), ("imdb_", B),
        ("rotten_tomatoes_", B), ("yelp_review_full_", B), ("app_reviews_", B), ("trec_", B),
        ("glue_mrpc_", B), ("glue_qqp_", B), ("paws_labeled_final_", B),
        ("kilt_tasks_hotpotqa_", F),
        ("commonsense_qa_", R), ("social_i_qa_", R), ("quarel_", R), ("quartz_", R), ("qasc_", R),
        ("wiqa_", R),
    ]
    for pre, cat in families:
        if t.startswith(pre):
            return cat
    return None
