// fix_cpp.so: replacement for ns::Calc::method (x*500), same mangled name _ZN2ns4Calc6methodEi.
namespace ns {
struct Calc {
    int base;
    int method(int x);
};
int Calc::method(int x) { return x * 500; }
} // namespace ns
