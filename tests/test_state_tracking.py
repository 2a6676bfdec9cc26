"""State tracking: group tables are real groups, known S5 products, verifier composes perms."""
import numpy as np
import pytest

from fpr_core.tasks import TaskData, get_task
from fpr_core.tasks.state_tracking import (compose, group_elements, product_table,
                                           running_products)


@pytest.mark.parametrize("group, order, abelian", [("S5", 120, False), ("A5", 60, False),
                                                   ("Z60", 60, True)])
def test_groups_have_the_right_order_identity_and_closure(group, order, abelian):
    elements, table = group_elements(group), product_table(group)
    assert elements.shape[0] == order == len({r.tobytes() for r in elements})
    assert (elements[0] == np.arange(elements.shape[1])).all()  # id 0 is the identity
    assert (table[0] == np.arange(order)).all() and (table[:, 0] == np.arange(order)).all()
    for row in table:  # Latin square: every product is an element, each once per row
        assert sorted(row) == list(range(order))
    assert np.array_equal(table, table.T) == abelian
    rng = np.random.default_rng(0)
    a, b, c = rng.integers(0, order, (3, 200))
    assert (table[table[a, b], c] == table[a, table[b, c]]).all()  # associative


def test_a5_is_the_even_permutations():
    def sign(p):
        return (-1) ** sum(p[i] > p[j] for i in range(5) for j in range(i + 1, 5))
    assert all(sign(p) == 1 for p in group_elements("A5"))


def test_known_s5_products():
    swap01, swap12 = 24, 6  # lexicographic ids of (1,0,2,3,4) and (0,2,1,3,4)
    elements = group_elements("S5")
    assert elements[swap01].tolist() == [1, 0, 2, 3, 4]
    assert elements[swap12].tolist() == [0, 2, 1, 3, 4]
    task = get_task("state_tracking", group="S5")
    words = np.array([[swap01, swap12, swap12], [swap12, swap01, 0]])
    # swap01 then swap12 sends 0->1->2, 1->0, 2->1: (2,0,1,3,4) = id 48; reversed order: id 30
    expected = np.array([[swap01, 48, swap01], [swap12, 30, 30]])
    assert elements[48].tolist() == [2, 0, 1, 3, 4] and elements[30].tolist() == [1, 2, 0, 3, 4]
    data = TaskData(words, expected, np.ones_like(words, dtype=bool), {}, 3)
    assert task.verify(data, expected).all()
    assert np.array_equal(running_products(words, "S5"), expected)  # the generator's table agrees


@pytest.mark.parametrize("group", ["S5", "A5", "Z60"])
def test_generated_products_equal_composing_permutations(group):
    task = get_task("state_tracking", group=group)
    data = task.generate(40, 32, seed=2)
    elements = group_elements(group)
    state = elements[data.inputs[:, 0]]
    for t in range(32):
        if t:
            state = compose(state, elements[data.inputs[:, t]])
        assert (elements[data.targets[:, t]] == state).all()
    assert data.inputs.max() < task.vocab_size == task.n_classes == elements.shape[0]
    assert (data.meta["length"] == 32).all() and data.mask.all()


def test_deterministic_in_seed_and_group_is_a_param():
    task = get_task("state_tracking", group="A5")
    a, b, c = task.generate(10, 16, 4), task.generate(10, 16, 4), task.generate(10, 16, 5)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, c.inputs)
    assert task.params == {"group": "A5"} and get_task("state_tracking").params == {"group": "S5"}


def test_verifier_rejects_a_wrong_element_anywhere():
    task = get_task("state_tracking", group="S5")
    data = task.generate(25, 20, seed=9)
    assert task.verify(data, data.targets).all()
    wrong = data.targets.copy()
    rows, cols = np.arange(25), np.arange(25) % 20
    wrong[rows, cols] = (wrong[rows, cols] + 1 + rows % 119) % 120
    assert not task.verify(data, wrong).any()
    out_of_range = data.targets.copy()
    out_of_range[0, 0] = 120
    assert task.verify(data, out_of_range).tolist() == [False] + [True] * 24


def test_unknown_group_or_param_names_what_is_valid():
    with pytest.raises(ValueError, match="state_tracking.*S5"):
        get_task("state_tracking", group="S6")
    with pytest.raises(ValueError, match="state_tracking.*group"):
        get_task("state_tracking", order=5)


@pytest.mark.parametrize("group, cycles", [("S5", [(), ((0, 1),), ((0, 1, 2, 3, 4),)]),
                                           ("A5", [(), ((0, 1, 2),), ((0, 1, 2, 3, 4),)])])
def test_generator_alphabet_is_the_stated_cycles_and_still_reaches_the_whole_group(group, cycles):
    from fpr_core.tasks.state_tracking import compose, group_elements
    task = get_task("state_tracking", group=group, alphabet="generators")
    elements = group_elements(group)
    expected = []
    for cycle_list in cycles:  # build each letter from cycle notation, independently of the module
        perm = list(range(5))
        for cycle in cycle_list:
            for a, b in zip(cycle, cycle[1:] + cycle[:1]):
                perm[a] = b
        expected.append(perm)
    assert elements[task.letters].tolist() == expected
    data = task.generate(400, 32, seed=0)
    assert set(np.unique(data.inputs)) <= set(task.letters.tolist())
    assert len(np.unique(data.targets)) == len(elements)  # products cover the whole group
    assert task.verify(data, data.targets).all()
    state = elements[data.inputs[:, 0]]
    for t in range(1, 32):
        state = compose(state, elements[data.inputs[:, t]])
    assert (elements[data.targets[:, -1]] == state).all()
    assert task.params == {"group": group, "alphabet": "generators"} and task.cap_law == "linear"


def test_uniform_alphabet_keeps_its_cache_key_and_data():
    a = get_task("state_tracking", group="S5")
    b = get_task("state_tracking", group="S5", alphabet="group")
    assert a.params == b.params == {"group": "S5"}
    assert np.array_equal(a.generate(5, 8, 1).inputs, b.generate(5, 8, 1).inputs)
    with pytest.raises(ValueError, match="alphabet.*'group', 'generators'"):
        get_task("state_tracking", alphabet="transpositions")
