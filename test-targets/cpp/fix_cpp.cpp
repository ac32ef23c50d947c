// fix_cpp.so: replacements for ns::Calc::method (x*500), same mangled name _ZN2ns4Calc6methodEi,
// and geo::Square::area(int) const (scale*1000), _ZNK3geo6Square4areaEi.
namespace ns {
struct Calc {
    int base;
    int method(int x);
};
int Calc::method(int x) { return x * 500; }
} // namespace ns

namespace geo {
struct Square {
    int side;
    int area(int scale) const;
};
int Square::area(int scale) const { return scale * 1000; }
} // namespace geo
